"""The replay ratio, accounted in one place: learner updates (batches drawn) per env step.

After ``learning_starts`` env steps, the env steps collected entitle the learner to
``ratio * (env_steps - learning_starts)`` updates. Two readers of the same number:

    due(env_steps, drawn)    batches to draw now in one process (single, each data-parallel
                             replica): one is due as soon as learning starts, then the rest as
                             entitled, so ``drawn`` stays within one batch of the entitlement;
    RateLimiter              (apex) lets either side run ahead by a slack of updates instead.
"""

from __future__ import annotations


class ReplayRatio:
    def __init__(self, updates_per_env_step: float, learning_starts: int):
        self.ratio = updates_per_env_step
        self.learning_starts = learning_starts

    def entitled(self, env_steps: int) -> float:
        """Updates that ``env_steps`` collected entitle the learner to."""
        if env_steps < self.learning_starts:
            return 0.0
        return self.ratio * (env_steps - self.learning_starts)

    def due(self, env_steps: int, drawn: int) -> int:
        """Batches to draw now, ``drawn`` having been drawn already."""
        if env_steps < self.learning_starts:
            return 0
        return max(0, int(self.entitled(env_steps)) + 1 - drawn)
