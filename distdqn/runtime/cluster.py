"""Start a local Ray instance, or join a cluster, with bounded waits and one-line errors.

With no address (and no ``RAY_ADDRESS``), a Ray instance is started inside this process tree and
shut down at the end (the embedded default: `distdqn train` with a distributed topology just works
on a laptop). It binds the loopback address only: its GCS, raylet, object manager, driver and
workers listen on 127.0.0.1, so nothing of a laptop run is reachable from the network. With
``--address host:port`` (or ``RAY_ADDRESS``), an existing cluster is joined as it is (its nodes
listen where they were started to; token authentication as the cluster has it); an address that
cannot be reached is reported within ``timeout_s`` instead of Ray's own retries.

Ray's messages while it starts (its token-authentication notice) are kept, not printed: the
conductor writes them to the run's ``run.log``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import ray
from ray._private import ray_constants

from distdqn import signals
from distdqn.errors import UserError

LOOPBACK = "127.0.0.1"


class ClusterError(UserError):
    """The Ray cluster cannot be started or reached."""


@dataclass
class Cluster:
    address: str | None      # None for the embedded local instance
    started_here: bool
    num_nodes: int
    num_cpus: float
    num_gpus: float
    startup_log: list[str] = field(default_factory=list)   # what Ray said while it started

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


def connect(address: str | None = None, num_cpus: int | None = None, timeout_s: float = 30.0,
            py_modules: list[str] | tuple[str, ...] = ()) -> Cluster:
    """Join ``address`` (or RAY_ADDRESS) or start a local instance; raise ClusterError on failure.
    ``py_modules``: the user's code (envs.py: ``user_module_paths``), shipped to every node with
    the job (Ray's runtime environment), so that workers there import it as the driver does."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        ray.shutdown()
    kwargs = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING,
              "configure_logging": True}
    if py_modules:
        kwargs["runtime_env"] = {"py_modules": list(py_modules)}
    if address in (None, "local"):
        # the local instance offers at least what the run asks for (oversubscribing the cores
        # rather than leaving some of its processes unscheduled)
        # address="local": always a new instance, even when `ray start` left one running here
        init_kwargs = dict(address="local", num_cpus=max(os.cpu_count() or 1, num_cpus or 0),
                           _node_ip_address=LOOPBACK, **kwargs)
        started_here = True
        address = None
    else:
        check_reachable(address, min(timeout_s, 10.0))
        init_kwargs = dict(address=address, **kwargs)
        started_here = False

    # Reachability was checked above with a bounded wait; ray.init itself must run on the main
    # thread (it installs signal handlers), and fails on its own when its processes do not start.
    try:
        with _kept(_RAY_STARTUP_LOGGERS) as startup_log, _loopback_node(started_here):
            ray.init(**init_kwargs)
    except Exception as exc:  # noqa: BLE001 - reported as one line
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        raise ClusterError(f"--address {address or 'local'}: {type(exc).__name__}: {first}") from None
    signals.reclaim()   # ray.init replaced the run's SIGTERM handler with its own
    resources = ray.cluster_resources()
    return Cluster(address, started_here, len([n for n in ray.nodes() if n.get("Alive")]),
                   resources.get("CPU", 0.0), resources.get("GPU", 0.0), startup_log)


@contextlib.contextmanager
def _loopback_node(local: bool) -> Iterator[None]:
    """While a local instance starts (``local``): its node address is the loopback address, so
    that every Ray process binds 127.0.0.1 (they bind the node's address). ``ray.init`` turns a
    ``_node_ip_address`` of 127.0.0.1 into the machine's routable address unless Ray's
    ENABLE_RAY_CLUSTER is off, the mode it uses on macOS and Windows to keep local instances off
    the network; it is switched off for the start only (joining a cluster later in this process
    must see the real address). tests/test_cluster.py lists a local run's listening sockets."""
    if not local or not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        yield
        return
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


_RAY_STARTUP_LOGGERS = ("ray._private.authentication.authentication_token_setup",)
"""Ray's loggers whose start-up messages go to the run's log instead of the terminal: the
token-authentication notice, printed on every start otherwise."""


@contextlib.contextmanager
def _kept(logger_names: tuple[str, ...]) -> Iterator[list[str]]:
    """Records of ``logger_names`` collected into the yielded list instead of printed."""
    kept: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    loggers = [logging.getLogger(name) for name in logger_names]
    saved = [(lg.propagate, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [Keep()], False
    try:
        yield kept
    finally:
        for lg, (propagate, handlers) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate


def require_custom_resources(needs: dict[str, float], what: str) -> None:
    """Fail fast, in one line, when the cluster's nodes do not offer the custom resources asked for."""
    have = ray.cluster_resources()
    short = {k: (v, have.get(k, 0.0)) for k, v in needs.items() if v > have.get(k, 0.0) + 1e-9}
    if short:
        missing = ", ".join(f"{k}: {need:g} (the cluster has {got:g})" for k, (need, got) in short.items())
        raise ClusterError(f"{what} needs {missing}; start nodes with `ray start --resources` to offer them")


def require_resources(cpus: float, gpus: float, what: str) -> None:
    """Fail fast, in one line, when the cluster cannot place what the run asks for (Ray would
    otherwise leave the tasks pending forever)."""
    have = ray.cluster_resources()
    have_cpus, have_gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if cpus > have_cpus + 1e-9 or gpus > have_gpus + 1e-9:
        raise ClusterError(f"{what} needs {cpus:g} CPUs and {gpus:g} GPUs; the cluster has "
                           f"{have_cpus:g} CPUs and {have_gpus:g} GPUs")
