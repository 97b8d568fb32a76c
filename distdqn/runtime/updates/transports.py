"""The registered transports of the update channel, and how one is chosen for a run.

    ray    RayCallsChannel: a Ray call per push (any worker Ray reaches; GPU learners)
    loops  LoopChannel: each worker runs its own loop on the cheapest path that reaches it,
           decided per worker by probing, never by assuming one host:
             shm  it can open a shared-memory segment of the server's host (shared_memory.py)
             tcp  it cannot: a socket to the server's address on the cluster's network (tcp.py)

``<topology>.transport``: ``auto`` (loops with CPU learners, each worker on its cheapest path;
Ray calls for GPU learners), or one named for every worker (``shm``, ``tcp``, ``ray``); one named
that cannot reach is a config error. A worker that is replaced is probed again.
"""

from __future__ import annotations

from typing import Any

import ray

from distdqn.config import Config
from distdqn.core.learner import GradientLearner
from distdqn.errors import ConfigError
from distdqn.local.rendezvous import LOOPBACK
from distdqn.runtime.pool import RolePool
from distdqn.runtime.updates import Exchange, UpdateChannel
from distdqn.runtime.updates.loops import LoopChannel
from distdqn.runtime.updates.ray_calls import RayCallsChannel
from distdqn.runtime.updates.shared_memory import Segment, sharing_memory
from distdqn.runtime.updates.tcp import SocketServer

PATHS = ("shm", "tcp")
"""The loops' paths, cheapest first; with ``ray`` these are ``<topology>.transport``'s values."""


def open_channel(cfg: Config, pool: RolePool, learner: GradientLearner, timeout_s: float) -> UpdateChannel:
    """The update channel between this process (the server) and ``pool``'s workers."""
    field, exchange = f"{cfg.topology}.transport", Exchange.of(cfg)
    wanted = getattr(cfg, cfg.topology).transport
    cpu = cfg.workers.gpus == 0 and cfg.learner.device != "cuda"
    if wanted == "ray" or (wanted == "auto" and not cpu):
        return RayCallsChannel(pool, exchange)
    if not cpu:
        raise ConfigError(f"{field}: {wanted} needs CPU learners (workers.gpus 0, learner.device not cuda); "
                          f"use auto or ray")
    shared = sharing_memory(pool.handles, timeout_s)
    if wanted == "shm" and not all(shared):
        raise ConfigError(f"{field}: shm needs every worker on the server's host (its shared memory); "
                          f"{shared.count(False)} of {len(shared)} are elsewhere (use auto, tcp or ray)")
    one_host = all(shared)

    def path_of(handle: Any) -> str:
        return "shm" if wanted != "tcp" and sharing_memory([handle], timeout_s)[0] else "tcp"

    endpoints = {
        "shm": lambda num_workers, num_params: Segment.create(num_workers, num_params),
        # bound to the loopback only when every worker shares this host (tcp asked for by name)
        "tcp": lambda num_workers, num_params: SocketServer(
            num_workers, num_params, LOOPBACK if wanted == "tcp" and one_host else ray.util.get_node_ip_address(),
            exchange.sync),
    }
    paths = ["shm" if s and wanted != "tcp" else "tcp" for s in shared]
    return LoopChannel(pool, exchange, learner.flat_params.numel(), timeout_s, paths, endpoints, path_of)
