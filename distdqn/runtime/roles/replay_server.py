"""The central replay of apex behind its rate limiter, and the calls every replay host serves.

A replay host is the ReplayServer (apex.replay_host=process) or the LearnerWorker itself
(apex.replay_host=learner). Its replay calls run on threads of the "replay" concurrency group,
beside whatever else the process does; the replay has its own lock. The replay carries data only:
an insert is answered with whether it was accepted, nothing else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from distdqn.config import Config
from distdqn.core.ratelimit import RateLimitedReplay, RateLimiter
from distdqn.core.transitions import Batch, Transitions
from distdqn.envs import EnvInfo
from distdqn.local import build
from distdqn.runtime.messages import InsertResult
from distdqn.runtime.process import Isolation, keep_off, process_identity

SAMPLE_WAIT_S = 5.0   # a replay call waits at most this long for the rate limiter, then returns empty
REPLAY_CALLS = 16     # threads of the "replay" concurrency group


def gated_replay(cfg: Config, info: EnvInfo, seed: int) -> RateLimitedReplay:
    return RateLimitedReplay(build.build_replay(cfg, info, seed),
                             RateLimiter(cfg.train.replay_ratio, cfg.learning_starts_env_steps,
                                         cfg.apex.slack_updates))


class ReplayHost:
    """The calls every replay host serves, on threads of the "replay" group (``gated`` is its
    RateLimitedReplay)."""

    gated: RateLimitedReplay

    @ray.method(concurrency_group="replay")
    def add(self, transitions: Transitions, priorities: np.ndarray | None, env_steps: int) -> InsertResult:
        """Insert once the rate limiter allows it; refused (nothing inserted) after SAMPLE_WAIT_S."""
        return InsertResult(self.gated.add(transitions, priorities, env_steps, SAMPLE_WAIT_S))

    @ray.method(concurrency_group="replay")
    def replay_stats(self) -> dict[str, Any]:
        return self.gated.stats()

    @ray.method(concurrency_group="replay")
    def replay_state(self) -> dict[str, Any]:
        return self.gated.state_dict()

    @ray.method(concurrency_group="replay")
    def load_replay_state(self, state: dict[str, Any]) -> None:
        self.gated.load_state_dict(state)


@ray.remote(concurrency_groups={"replay": REPLAY_CALLS})
class ReplayServer(ReplayHost):
    """The central replay in a process of its own (apex.replay_host=process): actors' inserts and
    the learner's samples run on threads, and wait (bounded) on each other through the rate limiter."""

    def __init__(self, cfg: Config, info: EnvInfo, seed: int):
        self.gated = gated_replay(cfg, info, seed)

    def keep_off(self, isolation: Isolation | None) -> None:
        """Keep off the learner's cores (the server is built before the learner takes them)."""
        keep_off(isolation)

    @ray.method(concurrency_group="replay")
    def sample(self, num_batches: int, batch_size: int, beta: float) -> Batch | None:
        """``num_batches`` batches, stacked into one Batch (8 arrays to send, not 8 per batch), once
        the rate limiter allows them; None after SAMPLE_WAIT_S."""
        return self.gated.sample(num_batches, batch_size, beta, SAMPLE_WAIT_S)

    @ray.method(concurrency_group="replay")
    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        self.gated.update_priorities(indices, td_errors)

    def identity(self) -> dict[str, Any]:
        return process_identity()

    @ray.method(concurrency_group="replay")
    def ping(self) -> bool:
        """Answers at once, beside the replay's other calls (the driver asks when an actor dies)."""
        return True
