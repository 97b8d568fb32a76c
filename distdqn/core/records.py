"""Records of what happened in a stretch of training, small enough to cross a process boundary:
episodes that ended (a count and sums, never the episodes themselves), metric sums over learner
updates, and the env steps they came with. Reports from every role are built from these."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Episodes:
    """Episodes that ended: how many, and the sums of their returns and lengths."""

    count: int = 0
    return_sum: float = 0.0
    length_sum: float = 0.0

    @classmethod
    def of(cls, returns: np.ndarray, lengths: np.ndarray) -> Episodes:
        return cls(len(returns), float(np.sum(returns)), float(np.sum(lengths)))

    @classmethod
    def from_means(cls, count: int, return_mean: float, length_mean: float) -> Episodes:
        """What a federated client tells the server: a count and means."""
        if count == 0:
            return cls()
        return cls(count, return_mean * count, length_mean * count)

    def __add__(self, other: Episodes) -> Episodes:
        return Episodes(self.count + other.count, self.return_sum + other.return_sum,
                        self.length_sum + other.length_sum)

    @property
    def return_mean(self) -> float:
        return self.return_sum / self.count if self.count else float("nan")

    @property
    def length_mean(self) -> float:
        return self.length_sum / self.count if self.count else float("nan")


@dataclass
class UpdateStats:
    """Learner updates made, and the sums of their metrics (loss, q_mean, grad_norm, ...)."""

    count: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, metrics: dict[str, float], count: int = 1) -> None:
        """``count`` updates whose metrics sum to ``metrics``."""
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += count

    def merge(self, other: UpdateStats) -> None:
        self.add(other.sums, other.count)

    def means(self) -> dict[str, float]:
        return {k: v / self.count for k, v in self.sums.items()} if self.count else {}


@dataclass
class Experience:
    """Env steps collected and the episodes that ended in them, since the previous report."""

    env_steps: int = 0
    episodes: Episodes = field(default_factory=Episodes)
    non_finite_steps: int = 0       # steps skipped for a NaN or infinite observation or reward
