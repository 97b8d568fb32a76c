"""An all-reduce rank (allreduce): a Replica (vector env, local replay, learner replica) that
averages its clipped gradient with every other rank's at each update (runtime/group.py: shared
memory on one host, torch.distributed between hosts), so that the replicas stay identical."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
import torch

from distdqn.config import Config
from distdqn.core.records import UpdateStats
from distdqn.envs import EnvInfo
from distdqn.local.replica import Replica
from distdqn.runtime.group import GroupMember, weights_hash
from distdqn.runtime.messages import RankReport, Weights
from distdqn.runtime.process import process_identity, set_worker_threads


@ray.remote
class AllReduceRank(GroupMember):
    def __init__(self, cfg: Config, info: EnvInfo, index: int, num_replicas: int, seed: int, cpus: float):
        set_worker_threads(cpus, cfg.train.torch_threads)
        self.replica = Replica(cfg, info, index, num_replicas, seed)   # each rank updates its own target
        self.index = index
        grads = self.replica.learner.flat_grads
        self._buffer = torch.zeros(grads.numel() + 1, dtype=grads.dtype, device=grads.device)   # + the collect flag
        self._collect_next = False
        per_collection = cfg.env.num_envs * cfg.train.steps_per_collect * cfg.train.replay_ratio
        self._pending_cap = max(2, int(2 * per_collection))

    def group_vector(self) -> torch.Tensor:
        return self._buffer

    def _average(self, grads: torch.Tensor) -> None:
        """Average the clipped gradient over all ranks, in place (one flat buffer: one exchange).
        One more element rides along: 1 from a rank whose pending batches are used up, so that
        every rank collects before the next update (``_aligned``)."""
        buffer = self._buffer
        buffer[:-1] = grads
        buffer[-1] = float(self.replica.pending == 0)
        self.averager.mean_(buffer)
        grads.copy_(buffer[:-1])
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
            stats.add(replica.learn(batch, self._average).metrics)
        return stats, collected_at

    def train_allreduce(self, num_updates: int) -> RankReport:
        """``num_updates`` synchronized updates: every rank calls this with the same count."""
        start, waited = time.perf_counter(), self.averager.wait_s
        updates, collected_at = self._aligned(num_updates)
        return RankReport(updates, self.replica.learner.updates, time.perf_counter() - start, self.replica.report(),
                          exchange_wait_s=self.averager.wait_s - waited, collected_at=collected_at)

    # ---- weights and state ----
    def set_weights(self, online: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> None:
        self.replica.set_weights(online, target)

    def publish(self) -> Weights:
        """This replica's current weights, put into the object store."""
        learner = self.replica.learner
        return Weights(learner.updates, [ray.put(learner.get_weights())])

    def weights_hash(self) -> str:
        """A hash of the online and target parameters (replicas in step have equal hashes)."""
        learner = self.replica.learner
        return weights_hash(learner.get_weights(), learner.get_target_weights())

    def state_dict(self, with_replay: bool) -> dict[str, Any]:
        return self.replica.state_dict(with_replay)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replica.load_state_dict(state)

    def identity(self) -> dict[str, Any]:
        return process_identity(index=self.index)
