"""The two records that flow through the core: transitions (written) and batches (sampled)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class Transitions:
    """N-step transitions, one row each, as NumPy arrays.

    ``reward`` is the discounted n-step return sum_{k<m} gamma^k r_{t+k}, ``discount`` is gamma^m for
    the m <= n steps actually summed, and ``terminated`` says the episode ended in a terminal state
    within those steps (then the target does not bootstrap). A truncated episode bootstraps from
    ``next_obs``, the last real observation of the episode.
    """

    obs: np.ndarray          # [B, *obs_shape]
    action: np.ndarray       # [B] int64
    reward: np.ndarray       # [B] float32
    next_obs: np.ndarray     # [B, *obs_shape]
    terminated: np.ndarray   # [B] bool
    discount: np.ndarray     # [B] float32

    def __len__(self) -> int:
        return len(self.action)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def concatenate(cls, parts: list[Transitions]) -> Transitions:
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})


@dataclass
class Batch(Transitions):
    """Transitions sampled from a replay, with where they came from and their importance weights."""

    indices: np.ndarray = None  # [B] int64 positions in the replay
    weights: np.ndarray = None  # [B] float32 importance-sampling weights (ones for uniform replay)

    def split(self, num_batches: int) -> list[Batch]:
        """Consecutive equal parts, as views (no copies)."""
        size = len(self) // num_batches
        return [Batch(**{f.name: getattr(self, f.name)[i * size:(i + 1) * size] for f in fields(self)})
                for i in range(num_batches)]
