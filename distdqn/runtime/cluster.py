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


def check_reachable(address: str | None, timeout_s: float = 10.0) -> None:
    """Raise ClusterError unless ``address`` (or RAY_ADDRESS) is empty, ``auto``, or answers on TCP."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local", "auto"):
        return
    host, port = _host_port(address)
    problem = _reachable(host, port, timeout_s)
    if problem is not None:
        raise ClusterError(f"--address {address}: cannot reach a Ray cluster there ({problem})")


def connect(address: str | None = None, num_cpus: int | None = None, timeout_s: float = 30.0) -> Cluster:
    """Join ``address`` (or RAY_ADDRESS) or start a local instance; raise ClusterError on failure."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        ray.shutdown()
    kwargs = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING,
              "configure_logging": True}
    if address in (None, "local"):
        # the local instance offers at least what the run asks for (oversubscribing the cores
        # rather than leaving some of its processes unscheduled)
        # address="local": always a new instance, even when `ray start` left one running here
        init_kwargs = dict(address="local", num_cpus=max(os.cpu_count() or 1, num_cpus or 0), **kwargs)
        started_here = True
        address = None
    else:
        check_reachable(address, min(timeout_s, 10.0))
        init_kwargs = dict(address=address, **kwargs)
        started_here = False

    # Reachability was checked above with a bounded wait; ray.init itself must run on the main
    # thread (it installs signal handlers), and fails on its own when its processes do not start.
    try:
        ray.init(**init_kwargs)
    except Exception as exc:  # noqa: BLE001 - reported as one line
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        raise ClusterError(f"--address {address or 'local'}: {type(exc).__name__}: {first}") from None
    resources = ray.cluster_resources()
    return Cluster(address, started_here, len([n for n in ray.nodes() if n.get("Alive")]),
                   resources.get("CPU", 0.0), resources.get("GPU", 0.0))


def require_resources(cpus: float, gpus: float, what: str) -> None:
    """Fail fast, in one line, when the cluster cannot place what the run asks for (Ray would
    otherwise leave the tasks pending forever)."""
    have = ray.cluster_resources()
    have_cpus, have_gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if cpus > have_cpus + 1e-9 or gpus > have_gpus + 1e-9:
        raise ClusterError(f"{what} needs {cpus:g} CPUs and {gpus:g} GPUs; the cluster has "
                           f"{have_cpus:g} CPUs and {have_gpus:g} GPUs")
