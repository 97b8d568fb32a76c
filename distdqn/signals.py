"""SIGTERM and SIGINT end a run at its next safe point, not wherever they land.

SIGTERM is how SLURM, Kubernetes and ``timeout`` stop a job, SIGINT is Ctrl-C. While
``stop_signals()`` is active (``distdqn train``), the first of either only records the request;
the run's loop sees it at its next check (``RunSession.should_stop``: between two collect and
learn steps, or between two calls the conductor hands out), then finishes as it would at the end
of its budget: a final checkpoint, ``summary.json`` with ``stop_reason: terminated`` or
``interrupted``, every process and shared-memory segment released. The command then exits
143 / 130, as a process killed by the signal would. A second signal stops at once
(KeyboardInterrupt: no final checkpoint; the periodic ones are intact).

``ray.init`` installs SIGTERM handlers of its own in the driver: ``reclaim()`` puts this one back
(``runtime/cluster.py: connect`` calls it).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

STOP_REASONS = {signal.SIGTERM: "terminated", signal.SIGINT: "interrupted"}
EXIT_CODES = {"terminated": 128 + signal.SIGTERM, "interrupted": 128 + signal.SIGINT}

_requested: str | None = None
_active = False


def stop_requested() -> str | None:
    """``terminated`` or ``interrupted`` once a stop was asked for, else None."""
    return _requested


def exit_code(stop_reason: str | None) -> int:
    """The exit status of a run that ended for ``stop_reason``: 143 / 130 for a signal, else 0."""
    return EXIT_CODES.get(stop_reason or "", 0)


def _handler(signum: int, _frame: object) -> None:
    global _requested
    if _requested is not None:
        raise KeyboardInterrupt
    _requested = STOP_REASONS[signal.Signals(signum)]
    os.write(2, f"[distdqn] {signal.Signals(signum).name}: stopping at the next safe point (a final "
                f"checkpoint and summary follow); send it again to stop at once\n".encode())


def reclaim() -> None:
    """Install the handlers again (after a library replaced them), if ``stop_signals`` is active."""
    if _active:
        for signum in STOP_REASONS:
            signal.signal(signum, _handler)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGINT ask the run to stop at its next safe point."""
    global _requested, _active
    previous = {signum: signal.signal(signum, _handler) for signum in STOP_REASONS}
    _requested, _active = None, True
    try:
        yield
    finally:
        _active = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)
