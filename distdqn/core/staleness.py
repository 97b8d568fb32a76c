"""Staleness of asynchronous updates (async_ps): the server's version minus the version an update
was computed on, counted in bins 0 .. bound and one overflow bin for anything staler; updates in
the overflow bin are dropped (Gorila / A3C bound the delay the same way)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class StalenessHistogram:
    def __init__(self, bound: int, counts: list[int] | None = None):
        self.bound = bound
        self.counts = np.zeros(bound + 2, dtype=np.int64)
        if counts is not None:
            self.counts[:] = counts
        self.window = np.zeros_like(self.counts)   # since the last ``take_window``

    def add(self, staleness: int) -> bool:
        """Count one update; True if it is fresh enough to apply."""
        b = min(max(staleness, 0), self.bound + 1)
        self.counts[b] += 1
        self.window[b] += 1
        return staleness <= self.bound

    def take_window(self) -> np.ndarray:
        """The counts since the previous call (for a metrics row), and start a new window."""
        window, self.window = self.window, np.zeros_like(self.counts)
        return window

    def bins(self) -> dict[str, int]:
        """Non-empty bins by name: "0", "1", ..., ">bound"."""
        return {(str(i) if i <= self.bound else f">{self.bound}"): int(c)
                for i, c in enumerate(self.counts) if c}


@dataclass(frozen=True)
class StalenessStats:
    """Mean, 90th percentile and max of the staleness of some updates (None: there were none)."""

    staleness_mean: float | None = None
    staleness_p90: float | None = None
    staleness_max: float | None = None


def staleness_stats(counts: np.ndarray) -> StalenessStats:
    """The stats of staleness from bin counts (the overflow bin counts as bound + 1)."""
    total = int(counts.sum())
    if total == 0:
        return StalenessStats()
    values = np.arange(len(counts))
    cumulative = np.cumsum(counts)
    return StalenessStats(float((values * counts).sum() / total),
                          float(values[np.searchsorted(cumulative, 0.9 * total)]), float(values[counts > 0].max()))


def staleness_weight(staleness: int, exponent: float) -> float:
    """The weight of an update ``staleness`` model versions old: (1 + staleness)^-exponent, the
    polynomial discount of FedAsync (Xie et al. 2019); exponent 0.5 is FedBuff's 1/sqrt(1 + s)
    (Nguyen et al. 2022). 1 for a fresh update, falling toward 0 as it ages."""
    return float((1 + max(staleness, 0)) ** -exponent)
