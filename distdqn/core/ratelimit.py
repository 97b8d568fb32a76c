"""Keeps the replay ratio (learner updates per env step) what the config says, whoever is faster.

A sample of one batch is allowed while updates <= ratio * (env_steps - min_env_steps) + slack;
an insert is allowed while updates >= ratio * (env_steps - min_env_steps) - slack.
Fast actors wait for the learner, a fast learner waits for the actors; ``slack`` (in updates) lets
each side run ahead a little so that neither stalls on every call (Reverb's SampleToInsertRatio).
"""

from __future__ import annotations

from typing import Any


class RateLimiter:
    def __init__(self, updates_per_env_step: float, min_env_steps: int, slack_updates: float):
        self.ratio = updates_per_env_step
        self.min_env_steps = min_env_steps
        self.slack = max(1.0, slack_updates)
        self.env_steps = 0
        self.updates = 0

    def _owed(self, env_steps: int) -> float:
        """Updates the inserted env steps entitle the learner to."""
        if env_steps < self.min_env_steps:
            return 0.0
        return self.ratio * (env_steps - self.min_env_steps)

    def can_sample(self, num_batches: int) -> bool:
        if self.env_steps < self.min_env_steps:
            return False
        return self.updates + num_batches <= self._owed(self.env_steps) + self.slack

    def can_insert(self, env_steps: int) -> bool:
        """Judged before the insert (not after), so an insert larger than the slack still goes in
        once the learner has caught up: sampling and inserting can never both be refused."""
        return self.updates >= self._owed(self.env_steps) - self.slack

    def inserted(self, env_steps: int) -> None:
        self.env_steps += env_steps

    def sampled(self, num_batches: int) -> None:
        self.updates += num_batches

    def state_dict(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.env_steps, self.updates = int(state["env_steps"]), int(state["updates"])
