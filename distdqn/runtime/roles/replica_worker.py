"""A data-parallel worker (sync_ps, async_ps, allreduce): a Replica (vector env, local replay,
learner replica) behind bounded calls. Parameter servers push their weights with each call
(``Weights``: a box is empty when the worker already holds that version); all-reduce ranks average
their gradients every update, through shared memory on one node (runtime/collectives.py) or a
torch.distributed process group."""

from __future__ import annotations

import datetime
import hashlib
import socket
import time
from typing import Any

import numpy as np
import ray
import torch
import torch.distributed as dist

from distdqn.config import Config
from distdqn.core.records import UpdateStats
from distdqn.envs import EnvInfo
from distdqn.local.replica import Replica
from distdqn.runtime.collectives import SharedMemoryAllReduce
from distdqn.runtime.messages import GradientReport, ModelReport, RankReport, Weights
from distdqn.runtime.process import process_identity, set_worker_threads
from distdqn.runtime.weights import WeightsClient


def take_weights(replica: Replica, client: WeightsClient, weights: Weights | None) -> None:
    """Set the replica's learner to the pushed weights that are newer than those it holds."""
    online, target = client.offer(weights)
    if online is not None or target is not None:
        replica.set_weights(online if online is not None else replica.learner.get_weights(), target)


@ray.remote
class ReplicaWorker:
    def __init__(self, cfg: Config, info: EnvInfo, index: int, num_replicas: int, seed: int, cpus: float,
                 owns_target: bool):
        set_worker_threads(cpus, cfg.train.torch_threads)
        self.replica = Replica(cfg, info, index, num_replicas, seed)
        self.replica.learner.owns_target = owns_target
        self.index = index
        self.weights = WeightsClient()
        self._exchange: SharedMemoryAllReduce | None = None   # allreduce.backend shm

    # ---- parameter servers ----
    def gradient(self, weights: Weights | None, allow_collect: bool = True) -> GradientReport:
        """One gradient on the next owed batch, at the pushed weights (or the last taken)."""
        take_weights(self.replica, self.weights, weights)
        grads, metrics = self.replica.gradient(allow_collect)
        updates = UpdateStats()
        if grads is not None:
            updates.add(metrics)
        return GradientReport(grads, self.weights.version, updates, self.replica.report())

    def local_steps(self, weights: Weights | None, num_updates: int, allow_collect: bool = True) -> ModelReport:
        """``num_updates`` local learner updates from the pushed weights; returns the new model."""
        take_weights(self.replica, self.weights, weights)
        updates = self.replica.train(num_updates, allow_collect=allow_collect)
        return ModelReport(self.replica.learner.get_weights() if updates.count else None, self.weights.version,
                           updates, self.replica.report())

    def set_weights(self, online: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> None:
        self.replica.set_weights(online, target)

    # ---- all-reduce: a torch.distributed process group across the workers ----
    def rendezvous_address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the group's TCP store (as Ray Train does)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def join_group(self, address: str, port: int, rank: int, world_size: int, backend: str,
                   timeout_s: float) -> str:
        """Join the ranks' group: ``shm`` (ranks on one node: ``address`` names the shared-memory
        segment, which rank 0 creates before the others attach), else torch.distributed at
        ``address:port`` (``auto``: nccl on CUDA learners, else gloo)."""
        if backend == "shm":
            size = self.replica.learner.flat_grads.numel()
            self._exchange = SharedMemoryAllReduce(address, rank, world_size, size, rank == 0, timeout_s)
            return backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() and self.replica.learner.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
        return backend

    def _allreduce_mean(self, grads: list[torch.Tensor]) -> None:
        """Average the clipped gradient over all ranks, in place (the learner's gradient is one
        flat buffer: one all-reduce)."""
        for g in grads:
            if self._exchange is not None:
                self._exchange.mean_(g.numpy())
            else:
                dist.all_reduce(g, op=dist.ReduceOp.SUM)
                g /= dist.get_world_size()

    def train_allreduce(self, num_updates: int, publish: bool) -> RankReport:
        """``num_updates`` synchronized updates: every rank calls this with the same count."""
        start = time.perf_counter()
        waited = self._exchange.wait_s if self._exchange is not None else 0.0
        updates = self.replica.train(num_updates, reduce_grads=self._allreduce_mean)
        learner = self.replica.learner
        weights = self.publish() if publish else None
        waited = self._exchange.wait_s - waited if self._exchange is not None else float("nan")
        return RankReport(updates, learner.updates, time.perf_counter() - start, self.replica.report(), weights,
                          waited)

    def publish(self) -> Weights:
        """This replica's current weights, put into the object store."""
        learner = self.replica.learner
        return Weights(learner.updates, [ray.put(learner.get_weights())])

    def weights_hash(self) -> str:
        """A hash of the online and target parameters (replicas in step have equal hashes)."""
        h = hashlib.sha256()
        for weights in (self.replica.learner.get_weights(), self.replica.learner.get_target_weights()):
            for key in sorted(weights):
                h.update(key.encode())
                h.update(np.ascontiguousarray(weights[key]).tobytes())
        return h.hexdigest()[:16]

    def leave_group(self) -> None:
        if self._exchange is not None:
            self._exchange.close()
            self._exchange = None
        if dist.is_initialized():
            dist.destroy_process_group()

    # ---- state ----
    def state_dict(self, with_replay: bool) -> dict[str, Any]:
        return self.replica.state_dict(with_replay)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replica.load_state_dict(state)
        self.weights.reset()

    def identity(self) -> dict[str, Any]:
        return process_identity(index=self.index)
