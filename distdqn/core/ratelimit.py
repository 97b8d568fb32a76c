"""Keeps the replay ratio (learner updates per env step) what the config says, whoever is faster.

A sample of one batch is allowed while updates <= entitled(env_steps) + slack;
an insert is allowed while updates >= entitled(env_steps) - slack,
with ``entitled`` the replay ratio's one accounting (``core/ratio.py``).
Fast actors wait for the learner, a fast learner waits for the actors; ``slack`` (in updates) lets
each side run ahead a little so that neither stalls on every call (Reverb's SampleToInsertRatio).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from distdqn.core.ratio import ReplayRatio


class RateLimiter:
    def __init__(self, updates_per_env_step: float, min_env_steps: int, slack_updates: float):
        self.ratio = ReplayRatio(updates_per_env_step, min_env_steps)
        self.min_env_steps = min_env_steps
        self.slack = max(1.0, slack_updates)
        self.env_steps = 0
        self.updates = 0

    def can_sample(self, num_batches: int) -> bool:
        if self.env_steps < self.min_env_steps:
            return False
        return self.updates + num_batches <= self.ratio.entitled(self.env_steps) + self.slack

    def can_insert(self, env_steps: int) -> bool:
        """Judged before the insert (not after), so an insert larger than the slack still goes in
        once the learner has caught up: sampling and inserting can never both be refused."""
        return self.updates >= self.ratio.entitled(self.env_steps) - self.slack

    def inserted(self, env_steps: int) -> None:
        self.env_steps += env_steps

    def sampled(self, num_batches: int) -> None:
        self.updates += num_batches

    def state_dict(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.env_steps, self.updates = int(state["env_steps"]), int(state["updates"])


class RateLimitedReplay:
    """A replay behind a RateLimiter, shared by threads: ``add`` waits (at most ``timeout`` s) while
    the learner is behind, ``sample`` waits while the actors are; each returns False / None when its
    wait runs out, so the caller decides what to do (no call blocks for long). One lock guards the
    replay and the limiter; it is held for an insert or a draw, never across a learner update."""

    def __init__(self, replay: Any, limiter: RateLimiter):
        self.replay, self.limiter = replay, limiter
        self._changed = threading.Condition()
        self.wait_s = {"insert": 0.0, "sample": 0.0}

    def _wait_for(self, predicate, timeout: float, key: str) -> bool:
        start = time.perf_counter()
        ok = self._changed.wait_for(predicate, timeout)
        self.wait_s[key] += time.perf_counter() - start
        return ok

    def add(self, transitions: Any, priorities: Any, env_steps: int, timeout: float) -> bool:
        with self._changed:
            if not self._wait_for(lambda: self.limiter.can_insert(env_steps), timeout, "insert"):
                return False
            self.replay.add(transitions, priorities)
            self.limiter.inserted(env_steps)
            self._changed.notify_all()
        return True

    def sample(self, num_batches: int, batch_size: int, beta: float, timeout: float) -> Any:
        """``num_batches`` batches stacked into one Batch, or None if the limiter held them back."""
        with self._changed:
            if not self._wait_for(lambda: len(self.replay) >= batch_size and self.limiter.can_sample(num_batches),
                                  timeout, "sample"):
                return None
            self.limiter.sampled(num_batches)
            stacked = self.replay.sample_stacked(num_batches, batch_size, beta)
            self._changed.notify_all()
        return stacked

    def update_priorities(self, indices: Any, td_errors: Any) -> None:
        with self._changed:
            self.replay.update_priorities(indices, td_errors)

    def stats(self) -> dict[str, Any]:
        with self._changed:
            return {"replay_size": len(self.replay), "inserted_transitions": self.replay.total_added,
                    "inserted_env_steps": self.limiter.env_steps, "sampled_batches": self.limiter.updates,
                    "replay_insert_wait_s": self.wait_s["insert"], "replay_sample_wait_s": self.wait_s["sample"]}

    def state_dict(self) -> dict[str, Any]:
        with self._changed:
            return {"replay": self.replay.state_dict(), "limiter": self.limiter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._changed:
            self.replay.load_state_dict(state["replay"])
            self.limiter.load_state_dict(state["limiter"])
            self._changed.notify_all()
