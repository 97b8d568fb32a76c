"""Experience replay: a preallocated ring buffer, and prioritized replay on a two-level sum-tree.

Writes and samples are whole batches; no Python loop runs per transition. The tree keeps each
block's sum of priorities and searches the blocks with one cumulative sum, so a sample or a priority
update costs a handful of NumPy calls for the whole batch whatever the capacity (a binary tree
costs a few calls per level, 17 levels for 100,000 transitions: ``benchmarks/replay_ops.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distdqn.core.frames import FrameStorage, FullStorage
from distdqn.core.transitions import Batch, Transitions


def default_block(capacity: int) -> int:
    """Leaves per block: a power of two near sqrt(capacity / 256), in [8, 256] (16 for a capacity of
    100,000). A search costs one cumulative sum over capacity / block block sums (once per batch,
    after an update) plus work on one block per sampled transition; measured with
    ``benchmarks/replay_ops.py``, this balances them for batches of 64 (single) to 1,024 (apex)."""
    return int(2 ** np.clip(np.round(np.log2(np.sqrt(max(capacity, 1) / 256))), 3, 8))


class SumTree:
    """Leaves in blocks of ``block``, each block's ``op``-reduction kept up to date, and the
    reduction over all blocks computed on demand (cached until the next update).

    ``op=np.add`` gives prefix-sum search (sampling by priority); ``op=np.minimum`` the running
    minimum (for importance-weight normalisation). Leaves past ``capacity`` hold ``identity``.
    """

    def __init__(self, capacity: int, op=np.add, identity: float = 0.0, block: int | None = None):
        self.capacity = capacity
        self.op = op
        self.identity = identity
        self.block = block or default_block(capacity)
        num_blocks = -(-max(capacity, 1) // self.block)
        self.leaves = np.full(num_blocks * self.block, identity, dtype=np.float64)
        self._rows = self.leaves.reshape(num_blocks, self.block)   # a view: row b is block b
        self.block_values = np.full(num_blocks, identity, dtype=np.float64)
        self._prefix: np.ndarray | None = None    # cumulative block sums (op=np.add), when fresh

    @property
    def root(self) -> float:
        """op over every leaf."""
        if self.op is np.add:
            return float(self._cumulative()[-1])
        return float(self.op.reduce(self.block_values))

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        return self.leaves[indices]

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``indices`` to ``values`` (the last write wins for repeated indices), then
        recompute the blocks they fall in (a block named twice gets the same value twice)."""
        indices = np.asarray(indices, dtype=np.int64)
        self.leaves[indices] = values
        blocks = indices // self.block
        self.block_values[blocks] = self.op.reduce(self._rows[blocks], axis=1)
        self._prefix = None

    def _cumulative(self) -> np.ndarray:
        if self._prefix is None:
            self._prefix = np.cumsum(self.block_values)
        return self._prefix

    def find_prefix_sum(self, values: np.ndarray) -> np.ndarray:
        """For each value v, the leaf i with sum(leaves[:i]) <= v < sum(leaves[:i + 1]) (``op=np.add``).

        The block comes from a search of the cumulative block sums; within it, the leaf from the
        block's own cumulative sum (exact per block: no rounding from the blocks before it)."""
        values = np.asarray(values, dtype=np.float64)
        prefix = self._cumulative()
        blocks = np.minimum(np.searchsorted(prefix, values, side="right"), len(prefix) - 1)
        inclusive = np.cumsum(self._rows[blocks], axis=1)
        # the mass into the block, kept within [0, the block's total): rounding at either edge of
        # the block (or a value past the last block) lands on a leaf with mass, never an empty one
        within = np.clip(values - (prefix[blocks] - self.block_values[blocks]), 0.0,
                         np.nextafter(inclusive[:, -1], -np.inf))
        found = np.count_nonzero(inclusive <= within[:, None], axis=1)
        return blocks * self.block + np.minimum(found, self.block - 1)

    def state_dict(self) -> dict[str, Any]:
        return {"leaves": self.leaves[:self.capacity].copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the leaves."""
        leaves = np.asarray(state["leaves"], dtype=np.float64)
        if leaves.shape != (self.capacity,):
            raise ValueError(f"sum-tree with {leaves.shape[0]} leaves, expected {self.capacity}")
        self.leaves[:self.capacity] = leaves
        self.block_values[:] = self.op.reduce(self._rows, axis=1)
        self._prefix = None


def resolve_storage(storage: str, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> str:
    """``auto``: ``frames`` for stacked uint8 frames [C, H, W], else ``full``."""
    if storage != "auto":
        return storage
    return "frames" if np.dtype(obs_dtype) == np.uint8 and len(obs_shape) == 3 else "full"


class ReplayBuffer:
    """Uniform replay over a preallocated ring of ``capacity`` transitions.

    ``storage``: ``full`` keeps obs and next_obs as written; ``frames`` keeps each distinct frame
    of stacked observations once (``core/frames.py``); ``auto`` picks frames for [C, H, W] uint8."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype, seed: int = 0,
                 storage: str = "auto"):
        self.capacity = capacity
        self.obs_shape = tuple(obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.storage = resolve_storage(storage, self.obs_shape, self.obs_dtype)
        self._observations = (FrameStorage(capacity, self.obs_shape, self.obs_dtype, seed)
                              if self.storage == "frames" else FullStorage(capacity, self.obs_shape, self.obs_dtype))
        self._action = np.zeros(capacity, dtype=np.int64)
        self._reward = np.zeros(capacity, dtype=np.float32)
        self._terminated = np.zeros(capacity, dtype=bool)
        self._discount = np.zeros(capacity, dtype=np.float32)
        self._next = 0          # where the next transition is written
        self._size = 0
        self.total_added = 0    # transitions ever added (inserts), for rate metrics
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self._size

    def add(self, transitions: Transitions, priorities: np.ndarray | None = None) -> np.ndarray:
        """Write a batch of transitions, overwriting the oldest; returns the positions written."""
        n = len(transitions)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        keep = slice(max(0, n - self.capacity), n)   # a batch larger than the ring keeps its newest part
        positions = (self._next + np.arange(n, dtype=np.int64)[keep] - keep.start) % self.capacity
        self._observations.write(positions, transitions.obs[keep], transitions.next_obs[keep])
        self._action[positions] = transitions.action[keep]
        self._reward[positions] = transitions.reward[keep]
        self._terminated[positions] = transitions.terminated[keep]
        self._discount[positions] = transitions.discount[keep]
        self._next = int((positions[-1] + 1) % self.capacity)
        self._size = min(self.capacity, self._size + len(positions))
        self.total_added += n
        self._on_add(positions, None if priorities is None else np.asarray(priorities)[keep])
        return positions

    def _on_add(self, positions: np.ndarray, priorities: np.ndarray | None) -> None:
        pass

    def _gather(self, indices: np.ndarray, weights: np.ndarray) -> Batch:
        obs, next_obs = self._observations.read(indices)
        return Batch(
            obs=obs, action=self._action[indices], reward=self._reward[indices],
            next_obs=next_obs, terminated=self._terminated[indices],
            discount=self._discount[indices], indices=indices, weights=weights,
        )

    def sample(self, batch_size: int, beta: float = 1.0) -> Batch:
        """One batch of ``batch_size`` transitions (see ``sample_batches``)."""
        return self.sample_batches(1, batch_size, beta)[0]

    def sample_batches(self, num_batches: int, batch_size: int, beta: float = 1.0) -> list[Batch]:
        """``num_batches`` batches drawn at once: one index draw and one gather for all of them,
        then split into views (a learner that runs several updates per phase asks for them together)."""
        return self.sample_stacked(num_batches, batch_size, beta).split(num_batches)

    def sample_stacked(self, num_batches: int, batch_size: int, beta: float = 1.0) -> Batch:
        """The batches of ``sample_batches`` as one stacked Batch (fewer arrays to send elsewhere)."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay")
        indices, weights = self._draw(num_batches, batch_size, beta)
        return self._gather(indices.reshape(-1), weights.reshape(-1))

    def _draw(self, num_batches: int, batch_size: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
        """Uniform with replacement; every importance weight is 1."""
        indices = self.rng.integers(0, self._size, size=(num_batches, batch_size))
        return indices, np.ones((num_batches, batch_size), dtype=np.float32)

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """Uniform replay keeps no priorities."""

    # ---- one shard of several (core/shards.py) ----
    @property
    def mass(self) -> float:
        """What sampling is proportional to, summed: here every stored transition counts 1."""
        return float(self._size)

    @property
    def min_leaf(self) -> float:
        """The smallest stored (scaled) priority: 1 for uniform replay."""
        return 1.0

    def sample_at(self, fractions: np.ndarray) -> tuple[Batch, np.ndarray]:
        """The transitions found at ``fractions`` (in [0, 1)) of this replay's mass, and their
        (scaled) priorities; the batch's weights are left to whoever knows every shard's minimum."""
        indices, leaves = self._locate(np.asarray(fractions, dtype=np.float64))
        return self._gather(indices, np.ones(len(indices), dtype=np.float32)), leaves

    def _locate(self, fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.minimum((fractions * self._size).astype(np.int64), self._size - 1)
        return indices, np.ones(len(indices))

    # ---- checkpointing ----
    def state_dict(self) -> dict[str, Any]:
        n = self._size
        return {
            **self._observations.state_dict(n),
            "action": self._action[:n].copy(), "reward": self._reward[:n].copy(),
            "terminated": self._terminated[:n].copy(), "discount": self._discount[:n].copy(),
            "next": self._next, "size": self._size, "total_added": self.total_added,
            "capacity": self.capacity, "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay capacity {state['capacity']} != {self.capacity}")
        n = int(state["size"])
        self._observations.load_state_dict(state, n)
        for name in ("action", "reward", "terminated", "discount"):
            getattr(self, f"_{name}")[:n] = state[name]
        self._next, self._size = int(state["next"]), n
        self.total_added = int(state["total_added"])
        self.rng.bit_generator.state = state["rng"]


class PrioritizedReplay(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016).

    P(i) = p_i^alpha / sum_k p_k^alpha, importance weight w_i = (N * P(i))^-beta / max_j w_j, with
    p_i = |delta_i| + eps. New transitions get the highest priority seen so far unless the writer
    supplies priorities (Ape-X actors compute them).
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype, seed: int = 0,
                 alpha: float = 0.6, priority_eps: float = 1e-6, storage: str = "auto"):
        super().__init__(capacity, obs_shape, obs_dtype, seed, storage)
        self.alpha = alpha
        self.priority_eps = priority_eps
        self._sums = SumTree(capacity, np.add, 0.0)
        self._mins = SumTree(capacity, np.minimum, np.inf)
        self.max_priority = 1.0

    def _set(self, positions: np.ndarray, priorities: np.ndarray) -> None:
        scaled = np.power(priorities, self.alpha)
        self._sums.update(positions, scaled)
        self._mins.update(positions, scaled)

    def _on_add(self, positions: np.ndarray, priorities: np.ndarray | None) -> None:
        if priorities is None:
            priorities = np.full(len(positions), self.max_priority)
        else:   # a NaN or infinite priority would make the tree's total NaN: the highest seen instead
            priorities = np.abs(priorities) + self.priority_eps
            known = np.isfinite(priorities)
            if known.any():
                self.max_priority = max(self.max_priority, float(priorities[known].max()))
            priorities = np.where(known, priorities, self.max_priority)
        self._set(positions, priorities)

    def _draw(self, num_batches: int, batch_size: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
        """Stratified proportional sampling: each batch takes one draw from each of ``batch_size``
        equal-mass segments; all batches are searched in the sum-tree together."""
        total = self._sums.root
        targets = (np.arange(batch_size) + self.rng.random((num_batches, batch_size))) * (total / batch_size)
        indices = np.minimum(self._sums.find_prefix_sum(targets.reshape(-1)), self._size - 1)
        probs = self._sums[indices] / total
        min_prob = self._mins.root / total
        weights = np.power(probs / min_prob, -beta).astype(np.float32)  # = (N P_i)^-b / (N P_min)^-b
        return indices.reshape(num_batches, batch_size), weights.reshape(num_batches, batch_size)

    @property
    def mass(self) -> float:
        return self._sums.root

    @property
    def min_leaf(self) -> float:
        return self._mins.root

    def _locate(self, fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.minimum(self._sums.find_prefix_sum(fractions * self._sums.root), self._size - 1)
        return indices, self._sums[indices]

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """New priorities |td_error| + eps; a NaN or infinite one leaves that transition's as it was
        (one would make the tree's total NaN, and every later sample garbage)."""
        priorities = np.abs(np.asarray(td_errors, dtype=np.float64)) + self.priority_eps
        known = np.isfinite(priorities)
        if not known.all():
            indices, priorities = np.asarray(indices)[known], priorities[known]
            if not len(priorities):
                return
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self._set(np.asarray(indices), priorities)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(priorities=self._sums.state_dict()["leaves"], max_priority=self.max_priority)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The trees are rebuilt from the stored priorities."""
        super().load_state_dict(state)
        self._sums.load_state_dict({"leaves": state["priorities"]})
        stored = np.arange(self.capacity) < len(self)   # the ring fills positions 0, 1, ... first
        self._mins.load_state_dict({"leaves": np.where(stored, self._sums[np.arange(self.capacity)], np.inf)})
        self.max_priority = float(state["max_priority"])


def estimated_bytes(capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype, storage: str = "auto",
                    prioritized: bool = False) -> int:
    """Memory a full replay of ``capacity`` transitions holds: observations (``full``: obs and
    next_obs each; ``frames``: about one frame per transition, plus its references), the
    per-transition arrays, and the two sum-trees of a prioritized one."""
    itemsize = np.dtype(obs_dtype).itemsize
    if resolve_storage(storage, tuple(obs_shape), obs_dtype) == "frames":
        stack = obs_shape[0]
        observations = capacity * (int(np.prod(obs_shape[1:])) * itemsize * 9 // 8 + 2 * stack * 4 + 13)
    else:
        observations = 2 * capacity * int(np.prod(obs_shape)) * itemsize
    per_transition = 8 + 4 + 1 + 4 + (2 * 8 if prioritized else 0)
    return observations + capacity * per_transition


def make_replay(prioritized: bool, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype,
                seed: int, alpha: float = 0.6, priority_eps: float = 1e-6,
                storage: str = "auto") -> ReplayBuffer:
    if prioritized:
        return PrioritizedReplay(capacity, obs_shape, obs_dtype, seed, alpha, priority_eps, storage)
    return ReplayBuffer(capacity, obs_shape, obs_dtype, seed, storage)
