"""A parameter-server worker (sync_ps, async_ps): a Replica (vector env, local replay, learner
replica) that turns the server's weights into updates, a gradient or a model after local updates,
over whichever transport the server chose (runtime/updates/): a call per push (``push``, the
weights as its argument), or its own loop on the path that reaches the server (``attach``,
``serve``): the server's shared memory, or a socket to it.
The server keeps the target network and sends it."""

from __future__ import annotations

import time
from typing import Any

import ray

from distdqn.config import Config
from distdqn.core.records import UpdateStats
from distdqn.envs import EnvInfo
from distdqn.local.replica import Replica
from distdqn.runtime.group import opens_shared_memory
from distdqn.runtime.messages import PushReport, ServeReport, Weights
from distdqn.runtime.process import process_identity, set_worker_threads
from distdqn.runtime.updates import Exchange
from distdqn.runtime.updates.loops import WorkerLoop
from distdqn.runtime.updates.shared_memory import Segment
from distdqn.runtime.updates.tcp import SocketWorkerEnd
from distdqn.runtime.weights import WeightsClient, take_weights


@ray.remote
class PSWorker:
    def __init__(self, cfg: Config, info: EnvInfo, index: int, num_replicas: int, seed: int, cpus: float):
        set_worker_threads(cpus, cfg.train.torch_threads)
        self.replica = Replica(cfg, info, index, num_replicas, seed, owns_target=False)
        self.index = index
        self.exchange = Exchange.of(cfg)
        self.weights = WeightsClient()
        self._loop: WorkerLoop | None = None

    # ---- transport ray: a call per push ----
    def push(self, weights: Weights | None, allow_collect: bool) -> PushReport:
        """One update from the pushed weights (None: those last taken)."""
        start = time.perf_counter()
        take_weights(self.replica.learner, self.weights, weights)
        stats = UpdateStats()
        vector, count = self.replica.work(self.exchange.pushes_gradients, self.exchange.local_steps, allow_collect,
                                          stats)
        return PushReport(vector.copy() if vector is not None else None, self.weights.version, count, stats,
                          self.replica.report(), time.perf_counter() - start)

    # ---- transport shm: the worker's own loop on the server's segment ----
    def opens_shared_memory(self, name: str) -> bool:
        return opens_shared_memory(name)

    def attach(self, path: str, *where: Any) -> None:
        """Meet the server on ``path``: shm (``where``: the segment's name) or tcp (its address
        and port); from now on ``serve`` runs the worker's loop there."""
        size, timeout_s = self.replica.learner.flat_params.numel(), self.replica.cfg.workers.stall_timeout_s
        if self._loop is not None:
            self._loop.close()
        end = (Segment(where[0], self.replica.num_replicas, size, create=False) if path == "shm"
               else SocketWorkerEnd(where[0], where[1], self.index, size, self.exchange.sync, timeout_s))
        self._loop = WorkerLoop(end, self.replica, self.index, self.exchange)

    def serve(self, seconds: float, timeout_s: float) -> ServeReport:
        return self._loop.serve(seconds, timeout_s)

    def detach(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    # ---- state ----
    def state_dict(self, with_replay: bool) -> dict[str, Any]:
        return self.replica.state_dict(with_replay)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replica.load_state_dict(state)
        self.weights.reset()

    def identity(self) -> dict[str, Any]:
        return process_identity(index=self.index)
