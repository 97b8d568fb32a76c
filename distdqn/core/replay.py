"""Experience replay: a preallocated ring buffer, and prioritized replay on a vectorized sum-tree.

Writes and samples are whole batches; no Python loop runs per transition. The sum-tree walks one
level of the tree per NumPy call for the whole batch (log2(capacity) calls per batch).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distdqn.core.transitions import Batch, Transitions


class SumTree:
    """A complete binary tree whose every node holds ``op`` of its two children.

    ``op=np.add`` gives prefix-sum search (sampling by priority); ``op=np.minimum`` the running
    minimum (for importance-weight normalisation). Leaves are at positions [size, 2 * size).
    """

    def __init__(self, capacity: int, op=np.add, identity: float = 0.0):
        self.capacity = capacity
        self.size = 1 << max(0, int(np.ceil(np.log2(max(capacity, 1)))))
        self.depth = int(np.log2(self.size))
        self.op = op
        self.identity = identity
        self.tree = np.full(2 * self.size, identity, dtype=np.float64)

    @property
    def root(self) -> float:
        return float(self.tree[1])

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        return self.tree[np.asarray(indices) + self.size]

    def update(self, indices: np.ndarray, values: np.ndarray, levels: list[np.ndarray] | None = None) -> None:
        """Set leaves ``indices`` to ``values`` (the last write wins for repeated indices), then
        recompute their ancestors, one NumPy call per level. ``levels`` (from ``ancestors``) lets
        trees of the same size share the walk."""
        self.tree[np.asarray(indices, dtype=np.int64) + self.size] = values
        for nodes in self.ancestors(indices) if levels is None else levels:
            self.tree[nodes] = self.op(self.tree[2 * nodes], self.tree[2 * nodes + 1])

    def ancestors(self, indices: np.ndarray) -> list[np.ndarray]:
        """The distinct ancestors of leaves ``indices``, level by level up to the root. The leaves
        are sorted once; each level's parents then come out sorted, so dropping adjacent repeats
        dedups them without another sort."""
        nodes = np.unique(np.asarray(indices, dtype=np.int64) + self.size)
        levels = []
        for _ in range(self.depth if len(nodes) else 0):
            nodes = nodes >> 1
            distinct = np.empty(len(nodes), dtype=bool)
            distinct[0] = True
            np.not_equal(nodes[1:], nodes[:-1], out=distinct[1:])
            nodes = nodes[distinct]
            levels.append(nodes)
        return levels

    def find_prefix_sum(self, values: np.ndarray) -> np.ndarray:
        """For each value v, the leaf i with sum(leaves[:i]) <= v < sum(leaves[:i + 1]) (``op=np.add``)."""
        values = np.array(values, dtype=np.float64)
        nodes = np.ones(len(values), dtype=np.int64)
        for _ in range(self.depth):
            left = nodes << 1
            left_sum = self.tree[left]
            go_right = values >= left_sum
            values -= left_sum * go_right
            nodes = left + go_right
        return nodes - self.size

    def state_dict(self) -> dict[str, Any]:
        return {"tree": self.tree.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["tree"].shape != self.tree.shape:
            raise ValueError(f"sum-tree shape {state['tree'].shape} != {self.tree.shape}")
        self.tree[:] = state["tree"]


class ReplayBuffer:
    """Uniform replay over a preallocated ring of ``capacity`` transitions."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype, seed: int = 0):
        self.capacity = capacity
        self.obs_shape = tuple(obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self._obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self._next_obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
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
        self._obs[positions] = transitions.obs[keep]
        self._next_obs[positions] = transitions.next_obs[keep]
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
        return Batch(
            obs=self._obs[indices], action=self._action[indices], reward=self._reward[indices],
            next_obs=self._next_obs[indices], terminated=self._terminated[indices],
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

    # ---- checkpointing ----
    def state_dict(self) -> dict[str, Any]:
        n = self._size
        return {
            "obs": self._obs[:n].copy(), "next_obs": self._next_obs[:n].copy(),
            "action": self._action[:n].copy(), "reward": self._reward[:n].copy(),
            "terminated": self._terminated[:n].copy(), "discount": self._discount[:n].copy(),
            "next": self._next, "size": self._size, "total_added": self.total_added,
            "capacity": self.capacity, "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay capacity {state['capacity']} != {self.capacity}")
        if tuple(state["obs"].shape[1:]) != self.obs_shape:
            raise ValueError(f"replay observation shape {state['obs'].shape[1:]} != {self.obs_shape}")
        n = int(state["size"])
        for name in ("obs", "next_obs", "action", "reward", "terminated", "discount"):
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
                 alpha: float = 0.6, priority_eps: float = 1e-6):
        super().__init__(capacity, obs_shape, obs_dtype, seed)
        self.alpha = alpha
        self.priority_eps = priority_eps
        self._sums = SumTree(capacity, np.add, 0.0)
        self._mins = SumTree(capacity, np.minimum, np.inf)
        self.max_priority = 1.0

    def _set(self, positions: np.ndarray, priorities: np.ndarray) -> None:
        scaled = np.power(priorities, self.alpha)
        levels = self._sums.ancestors(positions)   # the same nodes in both trees
        self._sums.update(positions, scaled, levels)
        self._mins.update(positions, scaled, levels)

    def _on_add(self, positions: np.ndarray, priorities: np.ndarray | None) -> None:
        if priorities is None:
            priorities = np.full(len(positions), self.max_priority)
        else:
            priorities = np.abs(priorities) + self.priority_eps
            self.max_priority = max(self.max_priority, float(priorities.max()))
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

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        priorities = np.abs(np.asarray(td_errors, dtype=np.float64)) + self.priority_eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self._set(np.asarray(indices), priorities)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(sum_tree=self._sums.tree.copy(), min_tree=self._mins.tree.copy(),
                     max_priority=self.max_priority)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._sums.load_state_dict({"tree": state["sum_tree"]})
        self._mins.load_state_dict({"tree": state["min_tree"]})
        self.max_priority = float(state["max_priority"])


def make_replay(prioritized: bool, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype,
                seed: int, alpha: float = 0.6, priority_eps: float = 1e-6) -> ReplayBuffer:
    if prioritized:
        return PrioritizedReplay(capacity, obs_shape, obs_dtype, seed, alpha, priority_eps)
    return ReplayBuffer(capacity, obs_shape, obs_dtype, seed)
