"""apex's learner: a DQNLearner that trains in calls of ``apex.updates_per_call`` updates from the
replay it hosts (apex.replay_host=learner: actors insert into this process) or from a ReplayServer,
and publishes its weights on the weights channel every ``apex.weight_sync_period`` updates.

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
from distdqn.core.records import UpdateStats
from distdqn.core.transitions import Batch
from distdqn.envs import EnvInfo
from distdqn.local import build, model_parallel, rendezvous
from distdqn.runtime.messages import LearnerReport, Weights
from distdqn.runtime.process import Isolation, claim_cores, process_identity, set_worker_threads
from distdqn.runtime.roles.replay_server import (
    REPLAY_CALLS,
    SAMPLE_WAIT_S,
    ReplayHost,
    gated_replay,
)
from distdqn.runtime.weights import FETCH_TIMEOUT_S, WeightsPublisher


@ray.remote(concurrency_groups={"replay": REPLAY_CALLS, "weights": 2})
class LearnerWorker(ReplayHost):
    def __init__(self, cfg: Config, info: EnvInfo, replay: Any, seed: int):
        set_worker_threads(cfg.apex.learner_cpus)
        torch.manual_seed(seed)
        self.cfg, self.info = cfg, info
        self.learner = build.build_learner(cfg, info)
        self.gated = gated_replay(cfg, info, seed - 1) if replay is None else None   # hosted here
        self.replay = replay
        self.beta = build.build_beta_schedule(cfg)
        self._prefetch = None
        self.publisher = WeightsPublisher(background=True)   # its thread exists now: isolate() moves it
        self.publisher.publish(0, self.learner.get_weights())
        self._published_at = 0

    def isolate(self, num_cpus: int) -> Isolation | None:
        """The last ``num_cpus`` CPUs of this node for the thread that trains (this call runs on
        it); None: none to spare."""
        return claim_cores(num_cpus)

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
    def _sample(self, beta: float) -> Batch | None:
        """The next group of batches: drawn here from the hosted replay, or the one the replay
        server prepared while the previous group trained (and the next one asked for)."""
        num, batch_size = self.cfg.apex.batches_per_sample, self.cfg.learner.batch_size
        if self.gated is not None:
            return self.gated.sample(num, batch_size, beta, SAMPLE_WAIT_S)
        if self._prefetch is None:
            self._prefetch = self.replay.sample.remote(num, batch_size, beta)
        stacked = ray.get(self._prefetch, timeout=SAMPLE_WAIT_S + 30)
        self._prefetch = self.replay.sample.remote(num, batch_size, beta)
        return stacked

    def _return_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        if self.gated is not None:
            self.gated.update_priorities(indices, td_errors)
        else:
            self.replay.update_priorities.remote(indices, td_errors)

    def train(self, num_updates: int, env_steps: int) -> LearnerReport:
        """Up to ``num_updates`` updates (fewer when the rate limiter says wait for the actors)."""
        a = self.cfg.apex
        stats = UpdateStats()
        start, waited, stepping = time.perf_counter(), 0.0, 0.0
        published_before = self.publisher.newest.version
        beta = self.beta(env_steps)
        while stats.count < num_updates:
            t = time.perf_counter()
            stacked = self._sample(beta)
            waited += time.perf_counter() - t
            if stacked is None:
                break
            indices, priorities = [], []
            t = time.perf_counter()
            for batch in stacked.split(a.batches_per_sample):
                result = self.learner.step(batch)
                indices.append(batch.indices)
                priorities.append(result.priorities)
                stats.add(result.metrics)
            stepping += time.perf_counter() - t
            if self.cfg.replay.prioritized:  # one message (or one lock) for the whole group
                self._return_priorities(np.concatenate(indices), np.concatenate(priorities))
            if self.learner.updates - self._published_at >= a.weight_sync_period:
                self._published_at = self.learner.updates
                self.publisher.publish(self.learner.updates, self.learner.get_weights())
        newest = self.publisher.newest
        return LearnerReport(stats, self.learner.updates, time.perf_counter() - start - waited, waited, stepping,
                             newest if newest.version > published_before else None)

    # ---- state ----
    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)

    def identity(self) -> dict[str, Any]:
        return process_identity()   # on the training thread: its CPUs are the ones it took

    @ray.method(concurrency_group="weights")
    def ping(self) -> bool:
        """Answers at once, whatever the training thread is doing (the driver asks when an actor
        dies: a train call can be waiting for the actors' data, which waits for the driver)."""
        return True
