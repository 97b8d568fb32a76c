"""The central replay of apex behind its rate limiter, and the calls every replay host serves.

A replay host is a ReplayServer (apex.replay_host=process, and every shard of apex.replay_shards)
or the LearnerWorker itself (apex.replay_host=learner). Its replay calls run on threads of the
"replay" concurrency group, beside whatever else the process does; the replay has its own lock.
The replay carries data only: an insert is answered with whether it was accepted, nothing else.

One replay judges both sides of the replay ratio itself (``sample`` waits for the actors). A shard
of several judges only inserts, on what the learners tell it with each draw (``draw``) or while
they wait (``sync``); the learners judge sampling over all shards (runtime/shards.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from distdqn.config import Config
from distdqn.core.ratelimit import RateLimitedReplay, RateLimiter, ShardLimiter
from distdqn.core.transitions import Batch, Transitions
from distdqn.envs import EnvInfo
from distdqn.local import build
from distdqn.runtime.messages import InsertResult, ReplayStats, ShardDraw, ShardStatus
from distdqn.runtime.process import keep_off, process_identity, resolve

SAMPLE_WAIT_S = 5.0   # a replay call waits at most this long for the rate limiter, then returns empty
REPLAY_CALLS = 16     # threads of the "replay" concurrency group
LEARNER_CALLS = 8     # a ReplayServer's threads for the learners' calls (sample, draw, sync, priorities)


def gated_replay(cfg: Config, info: EnvInfo, seed: int, shard_capacity: int | None = None) -> RateLimitedReplay:
    """The replay behind its limiter: the whole run's, or one shard (of ``shard_capacity``
    transitions) with its view of the run's limiter."""
    limiter = RateLimiter if shard_capacity is None else ShardLimiter
    return RateLimitedReplay(build.build_replay(cfg, info, seed, shard_capacity),
                             limiter(cfg.train.replay_ratio, cfg.learning_starts_env_steps, cfg.apex.slack_updates))


class ReplayHost:
    """The calls every replay host serves, on threads of the "replay" group (``gated`` is its
    RateLimitedReplay)."""

    gated: RateLimitedReplay

    @ray.method(concurrency_group="replay")
    def add(self, transitions: Transitions, priorities: np.ndarray | None, env_steps: int) -> InsertResult:
        """Insert once the rate limiter allows it; refused (nothing inserted) after SAMPLE_WAIT_S."""
        return InsertResult(self.gated.add(transitions, priorities, env_steps, SAMPLE_WAIT_S))

    @ray.method(concurrency_group="replay")
    def replay_stats(self) -> ReplayStats:
        g = self.gated
        with g.lock:
            return ReplayStats(len(g.replay), g.replay.total_added, g.limiter.inserted_env_steps,
                               g.limiter.updates, g.insert_wait_s, g.sample_wait_s)

    @ray.method(concurrency_group="replay")
    def replay_state(self) -> dict[str, Any]:
        return self.gated.state_dict()

    @ray.method(concurrency_group="replay")
    def load_replay_state(self, state: dict[str, Any]) -> None:
        self.gated.load_state_dict(state)


@ray.remote(concurrency_groups={"replay": REPLAY_CALLS, "learners": LEARNER_CALLS})
class ReplayServer(ReplayHost):
    """The central replay in a process of its own (apex.replay_host=process), or one shard of
    apex.replay_shards (``shard_capacity`` given): actors' inserts and the learners' samples
    run on threads, and wait (bounded) on each other through the rate limiter. The learners'
    calls have threads of their own ("learners"): inserts held back by the rate limiter (one
    per actor, up to SAMPLE_WAIT_S each) must never keep a draw or a sync from the learners,
    whose updates are what lets them in."""

    def __init__(self, cfg: Config, info: EnvInfo, seed: int, shard_capacity: int | None = None):
        self.gated = gated_replay(cfg, info, seed, shard_capacity)

    def keep_off(self, isolations: list) -> None:
        """Keep off the learners' cores (the server is built before the learners take them;
        ``isolations``: references to what LearnerWorker.isolate returned)."""
        keep_off(resolve(isolations))

    @ray.method(concurrency_group="learners")
    def sample(self, num_batches: int, batch_size: int, beta: float) -> Batch | None:
        """``num_batches`` batches, stacked into one Batch (8 arrays to send, not 8 per batch), once
        the rate limiter allows them; None after SAMPLE_WAIT_S."""
        return self.gated.sample(num_batches, batch_size, beta, SAMPLE_WAIT_S)

    @ray.method(concurrency_group="learners")
    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        self.gated.update_priorities(indices, td_errors)

    # ---- a shard of several ----
    @ray.method(concurrency_group="learners")
    def draw(self, fractions: np.ndarray, updates: int, elsewhere_env_steps: int) -> ShardDraw:
        """The transitions at ``fractions`` of this shard's mass (a learner judged that the ratio
        allows them), after taking the learner's word on the updates and the other shards."""
        self.gated.synced(updates, elsewhere_env_steps)
        batch, leaves = self.gated.sample_at(fractions)
        return ShardDraw(batch, leaves, self._status())

    @ray.method(concurrency_group="learners")
    def sync(self, updates: int, elsewhere_env_steps: int) -> ShardStatus:
        """A learner's word without a draw (it waits for the actors): where this shard stands."""
        self.gated.synced(updates, elsewhere_env_steps)
        return self._status()

    def _status(self) -> ShardStatus:
        g = self.gated
        with g.lock:
            return ShardStatus(g.replay.mass, g.replay.min_leaf, len(g.replay), g.limiter.inserted_env_steps,
                               g.limiter.updates)

    def identity(self) -> dict[str, Any]:
        return process_identity()

    @ray.method(concurrency_group="replay")
    def ping(self) -> bool:
        """Answers at once, beside the replay's other calls (the driver asks when an actor dies)."""
        return True
