"""Waiting on a peer without a lock: what both sides of the loops' paths use (no Ray, no torch)."""

from __future__ import annotations

import os
import time


class Stopped(Exception):
    """The server asked the workers to stop."""


def spin_until(ready, timeout_s: float, stop=None) -> bool:
    """Wait until ``ready()`` (True) or ``timeout_s`` has passed (False): spin, yielding, for the
    first 0.2 ms, then sleep 50 us at a time so that a waiting process leaves the cores to those
    working. Raises ``Stopped`` as soon as ``stop()``."""
    start = time.perf_counter()
    while not ready():
        if stop is not None and stop():
            raise Stopped
        waited = time.perf_counter() - start
        if waited > timeout_s:
            return False
        if waited < 2e-4:
            os.sched_yield()
        else:
            time.sleep(5e-5)
    return True
