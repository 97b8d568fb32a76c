"""Start a local Ray instance, or join a cluster, with bounded waits and one-line errors.

With no address (and no ``RAY_ADDRESS``), a Ray instance is started inside this process tree and
shut down at the end (the embedded default: `distdqn train` with a distributed topology just works
on a laptop). With ``--address host:port`` (or ``RAY_ADDRESS``), an existing cluster is joined;
an address that cannot be reached is reported within ``timeout_s`` instead of Ray's own retries.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

import ray

from distdqn.errors import UserError


class ClusterError(UserError):
    """The Ray cluster cannot be started or reached."""


@dataclass
class Cluster:
    address: str | None      # None for the embedded local instance
    started_here: bool
    num_nodes: int
    num_cpus: float
    num_gpus: float

    def shutdown(self) -> None:
        if ray.is_initialized():
            ray.shutdown()


def _host_port(address: str) -> tuple[str, int]:
    address = address.removeprefix("ray://")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--address {address!r}: expected host:port, for example 127.0.0.1:6379")
    return host or "127.0.0.1", int(port)


def _reachable(host: str, port: int, timeout_s: float) -> str | None:
    """None if a TCP connection to host:port opens within the timeout, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def connect(address: str | None = None, num_cpus: int | None = None, timeout_s: float = 30.0) -> Cluster:
    """Join ``address`` (or RAY_ADDRESS) or start a local instance; raise ClusterError on failure."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        ray.shutdown()
    kwargs = dict(include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING,
                  configure_logging=True)
    if address in (None, "local"):
        init_kwargs = dict(num_cpus=num_cpus or os.cpu_count(), **kwargs)
        started_here = True
        address = None
    else:
        if address != "auto":
            host, port = _host_port(address)
            problem = _reachable(host, port, min(timeout_s, 10.0))
            if problem is not None:
                raise ClusterError(f"--address {address}: cannot reach a Ray cluster there ({problem})")
        init_kwargs = dict(address=address, **kwargs)
        started_here = False

    # ray.init has no overall timeout of its own: run it in a thread and bound the wait.
    outcome: dict[str, BaseException | None] = {}

    def init() -> None:
        try:
            ray.init(**init_kwargs)
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - reported below as one line
            outcome["error"] = exc

    thread = threading.Thread(target=init, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ClusterError(f"--address {address or 'local'}: Ray did not start or connect within {timeout_s:.0f} s")
    if outcome["error"] is not None:
        first = str(outcome["error"]).strip().splitlines()[0] if str(outcome["error"]).strip() else ""
        raise ClusterError(f"--address {address or 'local'}: {type(outcome['error']).__name__}: {first}")
    resources = ray.cluster_resources()
    return Cluster(address, started_here, len([n for n in ray.nodes() if n.get("Alive")]),
                   resources.get("CPU", 0.0), resources.get("GPU", 0.0))
