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
from multiprocessing import resource_tracker, shared_memory
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
from distdqn.runtime.messages import GradientReport, ModelReport, RankReport, ServeReport, Weights
from distdqn.runtime.process import process_identity, set_worker_threads
from distdqn.runtime.server_channel import ServerChannel, Stopped, spin_until
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
        self._channel: ServerChannel | None = None             # a parameter server's transport shm

    # ---- parameter servers ----
    def gradient(self, weights: Weights | None, allow_collect: bool = True) -> GradientReport:
        """One gradient on the next owed batch, at the pushed weights (or the last taken)."""
        take_weights(self.replica, self.weights, weights)
        result = self.replica.flat_gradient(allow_collect)
        updates = UpdateStats()
        if result is not None:
            updates.add(result.metrics)
        grads = self.replica.learner.flat_grads.numpy().copy() if result is not None else None
        return GradientReport(grads, self.weights.version, updates, self.replica.report())

    def local_steps(self, weights: Weights | None, num_updates: int, allow_collect: bool = True) -> ModelReport:
        """``num_updates`` local learner updates from the pushed weights; returns the new model."""
        take_weights(self.replica, self.weights, weights)
        updates = self.replica.train(num_updates, allow_collect=allow_collect)
        return ModelReport(self.replica.learner.flat_params.numpy().copy() if updates.count else None, self.weights.version,
                           updates, self.replica.report())

    def set_weights(self, online: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> None:
        self.replica.set_weights(online, target)

    # ---- parameter servers on this node: the worker's own loop over shared memory ----
    def opens_shared_memory(self, name: str) -> bool:
        """Whether this process can open the driver's shared-memory segment ``name`` (it is on the
        driver's machine, sharing its /dev/shm)."""
        try:
            segment = shared_memory.SharedMemory(name=name)
        except FileNotFoundError:
            return False
        resource_tracker.unregister(segment._name, "shared_memory")   # the driver removes it
        segment.close()
        return True

    def attach(self, name: str) -> None:
        """Attach to the server's channel ``name`` (runtime/server_channel.py)."""
        learner = self.replica.learner
        self._channel = ServerChannel(name, self.replica.num_replicas, learner.flat_params.numel(), create=False)
        self._based_on = (0, -1)     # (publication, version) of the weights held
        self._target_version = -1
        self._target = np.empty(learner.flat_params.numel(), dtype=np.float32)
        self._since_pull = 0
        self._env_steps_pushed = self.replica.env_steps

    def serve(self, sync: bool, mode: str, local_steps: int, pull_period: int, seconds: float,
              timeout_s: float) -> ServeReport:
        """Push gradients (``mode`` gradient) or models (``local_steps`` updates each) to the server
        for about ``seconds``. ``sync``: each push from a newer publication than the last (a round);
        else from the newest weights, taken every ``pull_period`` pushes."""
        channel, report = self._channel, ServeReport(UpdateStats(), None, 0, 0.0, 0.0)
        start = time.perf_counter()
        end = start + seconds
        try:
            while time.perf_counter() < end:
                if sync or self._since_pull == 0:
                    waited = time.perf_counter()
                    if sync and not spin_until(lambda: channel.published > self._based_on[0],
                                               end - waited, lambda: channel.stopped):
                        report.wait_s += time.perf_counter() - waited
                        break
                    self._pull()
                    report.wait_s += time.perf_counter() - waited
                vector, count = self._work(mode, local_steps, channel.collecting, report.updates)
                waited = time.perf_counter()
                steps, self._env_steps_pushed = self.replica.env_steps - self._env_steps_pushed, self.replica.env_steps
                channel.push(self.index, vector, self._based_on, count, steps, timeout_s)
                report.wait_s += time.perf_counter() - waited
                report.pushes += 1
                self._since_pull = (self._since_pull + 1) % pull_period
        except Stopped:
            pass
        report.experience = self.replica.report()
        report.busy_s = time.perf_counter() - start - report.wait_s
        return report

    def _pull(self) -> None:
        """Take the newest weights the server published (the target network only when it changed)."""
        learner = self.replica.learner
        publication, version, target_version = self._channel.latest(learner.flat_params.numpy(), self._target,
                                                                     self._target_version)
        if target_version != self._target_version:
            learner.set_flat_weights(None, self._target)
            self._target_version = target_version
        self._based_on = (publication, version)

    def _work(self, mode: str, local_steps: int, allow_collect: bool, updates: UpdateStats) -> tuple[np.ndarray | None, int]:
        """One gradient, or ``local_steps`` local updates: (the vector to push, updates in it)."""
        learner = self.replica.learner
        if mode == "gradient":
            result = self.replica.flat_gradient(allow_collect)
            if result is None:
                return None, 0
            updates.add(result.metrics)
            return learner.flat_grads.numpy(), 1
        stats = self.replica.train(local_steps, allow_collect=allow_collect)
        updates.merge(stats)
        return (learner.flat_params.numpy() if stats.count else None), stats.count

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
        learner, cfg = self.replica.learner, self.replica.cfg
        self._buffer = torch.zeros(learner.flat_grads.numel() + 1, dtype=learner.flat_grads.dtype,
                                   device=learner.flat_grads.device)   # the gradient and the collect flag
        self._collect_next = False
        per_collection = cfg.env.num_envs * cfg.train.steps_per_collect * cfg.train.replay_ratio
        self._pending_cap = max(2, int(2 * per_collection))
        if backend == "shm":
            self._exchange = SharedMemoryAllReduce(address, rank, world_size, self._buffer.numel(), rank == 0,
                                                   timeout_s)
            return backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() and self.replica.learner.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
        return backend

    def _allreduce_mean(self, grads: list[torch.Tensor]) -> None:
        """Average the clipped gradient over all ranks, in place (the learner's gradient is one
        flat buffer: one all-reduce). One more element rides along: 1 from a rank whose pending
        batches are used up, so that every rank collects before the next update (``_aligned``)."""
        (g,) = grads
        buffer = self._buffer
        buffer[:-1] = g
        buffer[-1] = float(self.replica.pending == 0)
        if self._exchange is not None:
            self._exchange.mean_(buffer.numpy())
        else:
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer /= dist.get_world_size()
        g.copy_(buffer[:-1])
        self._collect_next = bool(buffer[-1] > 0)

    def _aligned(self, num_updates: int) -> tuple[UpdateStats, list[int]]:
        """``num_updates`` updates, every rank collecting at the same update: when any rank has used
        up its batches, all collect (a rank far ahead in pending batches skips it). A rank collects
        a varying number of env steps (reset steps are not counted) and so owes a varying number of
        batches; left to collect when each runs out, the ranks' collections would drift apart and
        every rank would wait out every other rank's collection in the exchange. Returns the
        updates' metrics and the learner updates before which this rank collected."""
        stats, collected_at, replica = UpdateStats(), [], self.replica
        for _ in range(num_updates):
            env_steps = replica.env_steps
            if self._collect_next and replica.pending < self._pending_cap:
                replica.collect_owed()
            batch = replica.next_batch()
            if replica.env_steps != env_steps:
                collected_at.append(replica.learner.updates)
            stats.add(replica.learn(batch, self._allreduce_mean).metrics)
        return stats, collected_at

    def train_allreduce(self, num_updates: int, publish: bool) -> RankReport:
        """``num_updates`` synchronized updates: every rank calls this with the same count."""
        start = time.perf_counter()
        waited = self._exchange.wait_s if self._exchange is not None else 0.0
        updates, collected_at = self._aligned(num_updates)
        learner = self.replica.learner
        weights = self.publish() if publish else None
        waited = self._exchange.wait_s - waited if self._exchange is not None else float("nan")
        return RankReport(updates, learner.updates, time.perf_counter() - start, self.replica.report(), weights,
                          waited, collected_at)

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
        if self._channel is not None:
            self._channel.close()
            self._channel = None
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
