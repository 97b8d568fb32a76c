"""Keeps the replay ratio (learner updates per env step) what the config says, whoever is faster.

A sample of one batch is allowed while updates <= entitled(env_steps) + slack;
an insert is allowed while updates >= entitled(env_steps) - slack,
with ``entitled`` the replay ratio's one accounting (``core/ratio.py``).
Fast actors wait for the learner, a fast learner waits for the actors; ``slack`` (in updates) lets
each side run ahead a little so that neither stalls on every call (Reverb's SampleToInsertRatio).

With the replay in shards (apex.replay_shards), the ratio is held over all of them: the learners
(who count the updates) judge sampling on the env steps every shard reports, and each shard judges
inserts on its own env steps exactly and on the others' and the updates as the learners last told
it (``ShardLimiter.synced``). What either side does not know yet only makes it wait longer, never
run ahead, and a learner that waits tells every shard what it knows, so the two can never both be
refused for long.
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

    @property
    def inserted_env_steps(self) -> int:
        """The env steps inserted here."""
        return self.env_steps

    def sampled(self, num_batches: int) -> None:
        self.updates += num_batches

    def state_dict(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.env_steps, self.updates = int(state["env_steps"]), int(state["updates"])


class ShardLimiter(RateLimiter):
    """One shard's view of the run-wide limiter: its own inserts exactly; the other shards' env
    steps and the learners' updates as a learner last told it (each a lower bound of the truth,
    so its inserts are judged on a ratio at least as strict as the true one, short of what the
    other shards took since). Only inserts are judged here: the learners judge sampling."""

    def __init__(self, updates_per_env_step: float, min_env_steps: int, slack_updates: float):
        super().__init__(updates_per_env_step, min_env_steps, slack_updates)
        self.own_env_steps = 0
        self.elsewhere_env_steps = 0

    def inserted(self, env_steps: int) -> None:
        self.own_env_steps += env_steps
        self.env_steps = self.own_env_steps + self.elsewhere_env_steps

    def synced(self, updates: int, elsewhere_env_steps: int) -> None:
        """What a learner knows: the updates sampled so far, the other shards' env steps."""
        self.updates = max(self.updates, int(updates))
        self.elsewhere_env_steps = max(self.elsewhere_env_steps, int(elsewhere_env_steps))
        self.env_steps = self.own_env_steps + self.elsewhere_env_steps

    @property
    def inserted_env_steps(self) -> int:
        return self.own_env_steps

    def state_dict(self) -> dict[str, Any]:
        return {"env_steps": self.own_env_steps, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The others' env steps come with the learners' next word."""
        self.own_env_steps, self.updates = int(state["env_steps"]), int(state["updates"])
        self.elsewhere_env_steps, self.env_steps = 0, self.own_env_steps


class RateLimitedReplay:
    """A replay behind a RateLimiter, shared by threads: ``add`` waits (at most ``timeout`` s) while
    the learner is behind, ``sample`` waits while the actors are; each returns False / None when its
    wait runs out, so the caller decides what to do (no call blocks for long). One lock guards the
    replay and the limiter; it is held for an insert or a draw, never across a learner update."""

    def __init__(self, replay: Any, limiter: RateLimiter):
        self.replay, self.limiter = replay, limiter
        self._changed = threading.Condition()
        self.insert_wait_s = 0.0   # inserts waiting for the learner
        self.sample_wait_s = 0.0   # samples waiting for the actors

    @property
    def lock(self) -> threading.Condition:
        """Held to read the replay and the limiter together (a consistent snapshot)."""
        return self._changed

    def add(self, transitions: Any, priorities: Any, env_steps: int, timeout: float) -> bool:
        with self._changed:
            start = time.perf_counter()
            allowed = self._changed.wait_for(lambda: self.limiter.can_insert(env_steps), timeout)
            self.insert_wait_s += time.perf_counter() - start
            if not allowed:
                return False
            self.replay.add(transitions, priorities)
            self.limiter.inserted(env_steps)
            self._changed.notify_all()
        return True

    def sample(self, num_batches: int, batch_size: int, beta: float, timeout: float) -> Any:
        """``num_batches`` batches stacked into one Batch, or None if the limiter held them back."""
        with self._changed:
            start = time.perf_counter()
            allowed = self._changed.wait_for(
                lambda: len(self.replay) >= batch_size and self.limiter.can_sample(num_batches), timeout)
            self.sample_wait_s += time.perf_counter() - start
            if not allowed:
                return None
            self.limiter.sampled(num_batches)
            stacked = self.replay.sample_stacked(num_batches, batch_size, beta)
            self._changed.notify_all()
        return stacked

    def update_priorities(self, indices: Any, td_errors: Any) -> None:
        with self._changed:
            self.replay.update_priorities(indices, td_errors)

    # ---- one shard of several: the learners sample at fractions of the mass, and judge when ----
    def sample_at(self, fractions: Any) -> tuple[Any, Any]:
        """The transitions at ``fractions`` of this shard's mass, and their priorities (None, empty
        for no fractions); not judged here (the learners judge sampling over every shard)."""
        with self._changed:
            if len(fractions) == 0:
                return None, fractions
            return self.replay.sample_at(fractions)

    def synced(self, updates: int, elsewhere_env_steps: int) -> None:
        """A learner's word (``ShardLimiter.synced``): inserts waiting for it are judged again."""
        with self._changed:
            self.limiter.synced(updates, elsewhere_env_steps)
            self._changed.notify_all()

    def state_dict(self) -> dict[str, Any]:
        with self._changed:
            return {"replay": self.replay.state_dict(), "limiter": self.limiter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._changed:
            self.replay.load_state_dict(state["replay"])
            self.limiter.load_state_dict(state["limiter"])
            self._changed.notify_all()
