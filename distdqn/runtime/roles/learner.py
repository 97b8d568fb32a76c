"""apex's learner: a DQNLearner that trains in calls of ``apex.updates_per_call`` updates from the
replay it hosts (apex.replay_host=learner: actors insert into this process), from a ReplayServer,
or, with apex.replay_shards > 1 or a group of learners, through a ShardedSampler (runtime/shards.py);
learner 0 publishes its weights on the weights channel every ``apex.weight_sync_period`` updates.

In a group of ``apex.num_learners`` learners (runtime/learner_group.py) every learner takes every
update: it draws its share of each batch, and the group averages the clipped gradient before the
optimizer step, so that every replica stays identical; each learner returns its own draws' new
priorities to their shards.

Concurrency groups: training, weights and learner state run one at a time on the default group's
one thread (which ``isolate`` gives cores of its own); the replay's calls run on the "replay"
group's threads beside it (the replay has its own lock; torch releases the GIL during an update);
``published`` runs on a "weights" thread, so actors asking for weights never queue behind training.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
import torch

from distdqn.config import Config
from distdqn.core.learner import StepResult
from distdqn.core.ratelimit import RateLimitedReplay
from distdqn.core.records import UpdateStats
from distdqn.core.transitions import Batch
from distdqn.envs import EnvInfo
from distdqn.local import build, model_parallel, rendezvous
from distdqn.runtime.group import GroupMember, GroupSpec, weights_hash
from distdqn.runtime.learner_group import Agreement
from distdqn.runtime.messages import LearnerReport, Weights
from distdqn.runtime.process import Isolation, claim_cores, process_identity, set_worker_threads
from distdqn.runtime.roles.replay_server import (
    REPLAY_CALLS,
    SAMPLE_WAIT_S,
    ReplayHost,
    gated_replay,
)
from distdqn.runtime.shards import ShardedSampler
from distdqn.runtime.weights import FETCH_TIMEOUT_S, WeightsPublisher


class HostedReplay:
    """The replay in this process (apex.replay_host=learner): drawn from and updated in place."""

    def __init__(self, cfg: Config, gated: RateLimitedReplay):
        self.cfg, self.gated = cfg, gated

    def next(self, beta: float) -> Batch | None:
        return self.gated.sample(self.cfg.apex.batches_per_sample, self.cfg.learner.batch_size, beta, SAMPLE_WAIT_S)

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        self.gated.update_priorities(indices, td_errors)


class ServedReplay:
    """One ReplayServer (apex.replay_host=process): the next group of batches is the one the
    server prepared while the previous group trained (and the next one asked for)."""

    def __init__(self, cfg: Config, server: Any):
        self.cfg, self.server = cfg, server
        self._prefetch = None

    def next(self, beta: float) -> Batch | None:
        num, batch_size = self.cfg.apex.batches_per_sample, self.cfg.learner.batch_size
        if self._prefetch is None:
            self._prefetch = self.server.sample.remote(num, batch_size, beta)
        stacked = ray.get(self._prefetch, timeout=SAMPLE_WAIT_S + 30)
        self._prefetch = self.server.sample.remote(num, batch_size, beta)
        return stacked

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        self.server.update_priorities.remote(indices, td_errors)


@ray.remote(concurrency_groups={"replay": REPLAY_CALLS, "weights": 2})
class LearnerWorker(ReplayHost, GroupMember):
    def __init__(self, cfg: Config, info: EnvInfo, replays: list | None, seed: int, rank: int = 0,
                 num_learners: int = 1):
        """``replays``: None (the replay lives here), one ReplayServer, or the shards; ``rank`` of
        ``num_learners`` learners (a group beyond 1: ``join_group``)."""
        set_worker_threads(cfg.apex.learner_cpus)
        torch.manual_seed(seed)
        self.cfg, self.info, self.rank, self.num_learners = cfg, info, rank, num_learners
        self.learner = build.build_learner(cfg, info)
        self.gated = gated_replay(cfg, info, seed - 1) if replays is None else None   # hosted here
        self.agreement: Agreement | None = None
        self._exchange_s = 0.0   # in the group's exchanges (gradients and agreements)
        if replays is None:
            self.source = HostedReplay(cfg, self.gated)
        elif len(replays) == 1 and num_learners == 1:
            self.source = ServedReplay(cfg, replays[0])
        else:
            self.source = ShardedSampler(cfg, replays, rank, num_learners, seed, self._agree)
        self.beta = build.build_beta_schedule(cfg)
        self.publisher = WeightsPublisher(background=True)   # its thread exists now: isolate() moves it
        self.publisher.publish(0, self.learner.get_weights())
        self._published_at = 0

    def isolate(self, num_cpus: int, block: int = 0, blocks: int = 1) -> Isolation | None:
        """``num_cpus`` CPUs of this node for the thread that trains (this call runs on it): block
        ``block`` of the last ``blocks`` (one per learner on the node); None: none to spare."""
        return claim_cores(num_cpus, block, blocks)

    # ---- apex.num_learners > 1: this learner's group (runtime/group.py) ----
    def group_vector(self) -> torch.Tensor:
        return self.learner.flat_grads

    def join_group(self, spec: GroupSpec, rank: int) -> str:
        backend = super().join_group(spec, rank)
        self.agreement = Agreement(spec, rank)
        return backend

    def leave_group(self) -> None:
        if self.agreement is not None:
            self.agreement.close()
            self.agreement = None
        super().leave_group()

    def _update(self, batch: Batch) -> StepResult:
        """One update: alone, a step; in a group, the clipped gradient averaged over the group first."""
        if self.averager is None:
            return self.learner.step(batch)
        result = self.learner.gradient(batch)
        start = time.perf_counter()
        self.averager.mean_(self.learner.flat_grads)
        self._exchange_s += time.perf_counter() - start
        self.learner.apply_gradient()
        return result

    def _agree(self, flag: bool) -> bool:
        if self.agreement is None:
            return flag
        start = time.perf_counter()
        agreed = self.agreement.agree(flag)
        self._exchange_s += time.perf_counter() - start
        return agreed

    def weights_hash(self) -> str:
        """A hash of the online and target parameters (the group's replicas have equal hashes)."""
        return weights_hash(self.learner.get_weights(), self.learner.get_target_weights())

    # ---- learner.model_parallel > 1: this process is rank 0 of the learner's ranks ----
    def rendezvous_port(self) -> int:
        """A port on this node's loopback for the ranks' rendezvous (their store lives here, bound
        now: the ranks share this node, nothing else can reach it)."""
        self._listener = rendezvous.listen(rendezvous.LOOPBACK)
        return self._listener.getsockname()[1]

    def lead_ranks(self, port: int) -> None:
        """Form the group with the other ranks (joining at ``port`` meanwhile) and hand them their
        parts of the learner: from now on every call to the learner is made by all ranks."""
        self.learner = model_parallel.lead(self.learner, self.cfg, self.info, self._listener)

    def release_ranks(self) -> None:
        """The other ranks end their call (the learner's last use: after the final state)."""
        if isinstance(self.learner, model_parallel.ModelParallelLearner):
            self.learner.close()

    # ---- the weights channel ----
    @ray.method(concurrency_group="weights")
    def published(self) -> Weights:
        """The newest publication in the object store (what actors' weights clients ask for)."""
        return self.publisher.newest

    def weights(self) -> Weights:
        """The current weights, published now (waits for the put)."""
        self.publisher.publish(self.learner.updates, self.learner.get_weights())
        self.publisher.wait(FETCH_TIMEOUT_S)
        self._published_at = self.learner.updates
        return self.publisher.newest

    # ---- learning ----
    def train(self, num_updates: int, env_steps: int) -> LearnerReport:
        """Up to ``num_updates`` updates (fewer when the rate limiter says wait for the actors)."""
        a = self.cfg.apex
        stats = UpdateStats()
        start, waited, stepping = time.perf_counter(), 0.0, 0.0
        exchanged = self._exchange_s
        published_before = self.publisher.newest.version
        beta = self.beta(env_steps)
        while stats.count < num_updates:
            t = time.perf_counter()
            stacked = self.source.next(beta)
            waited += time.perf_counter() - t
            if stacked is None:
                break
            indices, priorities = [], []
            t = time.perf_counter()
            for batch in stacked.split(a.batches_per_sample):
                result = self._update(batch)
                indices.append(batch.indices)
                priorities.append(result.priorities)
                stats.add(result.metrics)
            stepping += time.perf_counter() - t
            if self.cfg.replay.prioritized:  # one message (or one lock) for the whole group
                self.source.update_priorities(np.concatenate(indices), np.concatenate(priorities))
            if self.rank == 0 and self.learner.updates - self._published_at >= a.weight_sync_period:
                self._published_at = self.learner.updates
                self.publisher.publish(self.learner.updates, self.learner.get_weights())
        newest = self.publisher.newest
        return LearnerReport(stats, self.learner.updates, time.perf_counter() - start - waited, waited, stepping,
                             newest if newest.version > published_before else None,
                             self._exchange_s - exchanged)

    # ---- state ----
    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)

    def identity(self) -> dict[str, Any]:
        """On the training thread: its CPUs are the ones it took."""
        return process_identity(**({"learner_rank": self.rank} if self.num_learners > 1 else {}))

    @ray.method(concurrency_group="weights")
    def ping(self) -> bool:
        """Answers at once, whatever the training thread is doing (the driver asks when an actor
        dies: a train call can be waiting for the actors' data, which waits for the driver)."""
        return True
