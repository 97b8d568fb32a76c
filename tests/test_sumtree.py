"""SumTree: prefix-sum search and min-tree against hand-computed values and a NumPy reference,
for the default block size and for small ones (many blocks per tree)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distdqn.core.replay import SumTree


def make_tree(leaves, capacity=None, op=np.add, identity=0.0, block=None) -> SumTree:
    leaves = np.asarray(leaves, dtype=np.float64)
    tree = SumTree(len(leaves) if capacity is None else capacity, op, identity, block)
    tree.update(np.arange(len(leaves)), leaves)
    return tree


def reference_prefix_search(leaves: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The first leaf i with cumsum(leaves)[i] > v (skips zero-priority leaves)."""
    return np.searchsorted(np.cumsum(leaves), values, side="right")


def assert_internal_nodes_consistent(tree: SumTree, op=np.add) -> None:
    """Every block holds op over its leaves; leaves past the capacity hold the identity."""
    for b, value in enumerate(tree.block_values):
        expected = op.reduce(tree.leaves[b * tree.block:(b + 1) * tree.block])
        assert value == expected, f"block {b}: {value} != {expected}"
    np.testing.assert_array_equal(tree.leaves[tree.capacity:], tree.identity)


# ---- hand-computed examples ----

def test_prefix_search_hand_computed():
    tree = make_tree([1.0, 2.0, 3.0, 4.0])
    values = [0.0, 0.99, 1.0, 2.5, 5.99, 6.0, 9.99]
    np.testing.assert_array_equal(tree.find_prefix_sum(values), [0, 0, 1, 1, 2, 3, 3])
    assert tree.root == 10.0


def test_prefix_search_skips_zero_leaves():
    tree = make_tree([0.0, 2.0, 0.0, 0.0, 1.0])
    # cumsum [0, 2, 2, 2, 3]: [0, 2) -> leaf 1, [2, 3) -> leaf 4
    np.testing.assert_array_equal(tree.find_prefix_sum([0.0, 1.999, 2.0, 2.5, 2.999]), [1, 1, 4, 4, 4])


def test_find_prefix_sum_does_not_modify_its_input():
    tree = make_tree([1.0, 2.0, 3.0, 4.0])
    values = np.array([2.5, 9.0])
    tree.find_prefix_sum(values)
    np.testing.assert_array_equal(values, [2.5, 9.0])


@pytest.mark.parametrize("block", [None, 1, 2, 4])
@pytest.mark.parametrize("capacity", [1, 3, 5, 6, 7, 9, 13])
def test_capacities_that_fill_no_whole_block(capacity, block):
    leaves = np.arange(1, capacity + 1, dtype=np.float64)   # 1, 2, ..., capacity
    tree = make_tree(leaves, block=block)
    assert len(tree.leaves) >= capacity and len(tree.leaves) % tree.block == 0
    assert tree.root == leaves.sum()
    # the start of each leaf's interval and a point just below its end both map to that leaf
    starts = np.concatenate([[0.0], np.cumsum(leaves)[:-1]])
    ends = np.cumsum(leaves) - 0.5
    np.testing.assert_array_equal(tree.find_prefix_sum(starts), np.arange(capacity))
    np.testing.assert_array_equal(tree.find_prefix_sum(ends), np.arange(capacity))
    # padding leaves beyond the capacity hold the identity
    assert_internal_nodes_consistent(tree)


def test_capacity_one():
    tree = make_tree([3.0])
    assert tree.root == 3.0
    np.testing.assert_array_equal(tree.find_prefix_sum([0.0, 2.9]), [0, 0])


def test_update_with_repeated_indices_last_write_wins():
    tree = make_tree([1.0, 1.0, 1.0, 1.0, 1.0])
    tree.update(np.array([2, 0, 2, 2, 0]), np.array([5.0, 7.0, 6.0, 9.0, 3.0]))
    np.testing.assert_array_equal(tree[np.arange(5)], [3.0, 1.0, 9.0, 1.0, 1.0])
    assert tree.root == 15.0
    assert_internal_nodes_consistent(tree)


def test_root_equals_sum_after_updates():
    tree = make_tree([0.5, 1.5, 2.5])
    assert tree.root == 4.5
    tree.update(np.array([1]), np.array([10.0]))
    assert tree.root == 13.0
    tree.update(np.array([0, 2]), np.array([0.0, 0.0]))
    assert tree.root == 10.0
    np.testing.assert_array_equal(tree.find_prefix_sum([0.0, 9.99]), [1, 1])


def test_min_tree():
    tree = make_tree([4.0, 2.0, 7.0], capacity=5, op=np.minimum, identity=np.inf)
    assert tree.root == 2.0                      # unused leaves (inf) do not count
    tree.update(np.array([1]), np.array([9.0]))
    assert tree.root == 4.0
    tree.update(np.array([4]), np.array([0.5]))
    assert tree.root == 0.5
    tree.update(np.array([4, 4]), np.array([0.1, 8.0]))  # last write wins
    assert tree.root == 4.0
    assert_internal_nodes_consistent(tree, np.minimum)


def test_state_dict_round_trip_and_shape_check():
    tree = make_tree([1.0, 2.0, 3.0], block=2)
    other = SumTree(3, block=2)
    other.load_state_dict(tree.state_dict())
    np.testing.assert_array_equal(other.leaves, tree.leaves)
    np.testing.assert_array_equal(other.block_values, tree.block_values)
    assert other.root == 6.0
    state = tree.state_dict()
    tree.update(np.array([0]), np.array([100.0]))
    assert state["leaves"][0] == 1.0      # the state is a copy, not a view
    with pytest.raises(ValueError, match="3 leaves, expected 9"):
        SumTree(9).load_state_dict(state)


# ---- property-based ----

# Priorities as the replay stores them: zero (an empty slot) or (|delta| + eps)^alpha, never a
# subnormal float (whose rounding no tolerance relative to the total can bound).
leaf_vectors = st.integers(1, 40).flatmap(
    lambda n: st.lists(st.one_of(st.just(0.0), st.floats(1e-8, 100.0, allow_nan=False, allow_infinity=False)),
                       min_size=n, max_size=n)
)


blocks = st.sampled_from([None, 1, 2, 3, 8])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leaves=st.lists(st.integers(0, 1000), min_size=1, max_size=40),
       fractions=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=30), block=blocks)
def test_prefix_search_matches_searchsorted_exact(leaves, fractions, block):
    """Integer leaves keep every sum exact, so the tree must agree with the reference exactly."""
    leaves = np.asarray(leaves, dtype=np.float64)
    total = leaves.sum()
    if total == 0:
        return
    values = np.asarray(fractions) * total
    tree = make_tree(leaves, block=block)
    found = tree.find_prefix_sum(values)
    np.testing.assert_array_equal(found, reference_prefix_search(leaves, values))
    assert np.all(leaves[found] > 0)


@settings(max_examples=200, deadline=None)
@given(leaves=leaf_vectors, fractions=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=30),
       block=blocks)
def test_prefix_search_matches_searchsorted_floats(leaves, fractions, block):
    """Real-valued leaves: the answer brackets v, up to the rounding of summing in a different order."""
    leaves = np.asarray(leaves, dtype=np.float64)
    total = leaves.sum()
    if total <= 0:
        return
    values = np.asarray(fractions) * total
    tree = make_tree(leaves, block=block)
    found = tree.find_prefix_sum(values)
    expected = reference_prefix_search(leaves, values)
    cumsum = np.cumsum(leaves)
    tol = 1e-9 * total
    away_from_edges = np.min(np.abs(cumsum[None, :] - values[:, None]), axis=1) > tol
    np.testing.assert_array_equal(found[away_from_edges], expected[away_from_edges])
    # near an interval edge rounding may pick the neighbour, but never a leaf far from v
    assert np.all((found >= 0) & (found < len(tree.leaves)))
    inside = found < len(leaves)
    below = np.where(found > 0, cumsum[np.minimum(np.maximum(found - 1, 0), len(leaves) - 1)], 0.0)
    assert np.all(below <= values + tol)
    assert np.all(cumsum[found[inside]] > values[inside] - tol)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 33),
       updates=st.lists(st.tuples(st.lists(st.integers(0, 10_000), min_size=1, max_size=8),
                                  st.lists(st.floats(0.0, 50.0, allow_nan=False), min_size=8, max_size=8)),
                        min_size=1, max_size=12), block=blocks)
def test_random_updates_keep_internal_nodes_consistent(capacity, updates, block):
    sums = SumTree(capacity, np.add, 0.0, block)
    mins = SumTree(capacity, np.minimum, np.inf, block)
    leaves_sum = np.zeros(capacity)
    leaves_min = np.full(capacity, np.inf)
    for raw_indices, raw_values in updates:
        indices = np.asarray(raw_indices) % capacity
        values = np.asarray(raw_values[: len(indices)])
        sums.update(indices, values)
        mins.update(indices, values)
        for i, v in zip(indices, values):   # sequential: the last write wins
            leaves_sum[i] = v
            leaves_min[i] = v
        np.testing.assert_array_equal(sums[np.arange(capacity)], leaves_sum)
        np.testing.assert_array_equal(mins[np.arange(capacity)], leaves_min)
        assert_internal_nodes_consistent(sums, np.add)
        assert_internal_nodes_consistent(mins, np.minimum)
        assert sums.root == pytest.approx(leaves_sum.sum(), rel=1e-12, abs=1e-12)
        assert mins.root == leaves_min.min()


# ---- batched updates (a replay's priority updates) ----

@pytest.mark.parametrize("capacity", [1, 5, 64, 1000])
def test_sum_tree_blocks_stay_op_of_their_leaves_under_repeated_batched_updates(capacity):
    """Batched updates with repeated indices (a replay's priority updates) keep every block equal
    to op(its leaves) in both trees, and a repeated index takes its last value."""
    rng = np.random.default_rng(capacity)
    sums, mins = SumTree(capacity, np.add, 0.0), SumTree(capacity, np.minimum, np.inf)
    leaves = np.zeros(capacity)
    for _ in range(30):
        indices = rng.integers(0, capacity, rng.integers(0, 3 * capacity + 1))
        values = rng.random(len(indices)) + 0.01
        sums.update(indices, values)
        mins.update(indices, values)
        for i, v in zip(indices, values, strict=True):
            leaves[i] = v
        for tree, op in ((sums, np.add), (mins, np.minimum)):
            assert_internal_nodes_consistent(tree, op)
            np.testing.assert_array_equal(tree[np.arange(capacity)], np.where(leaves > 0, leaves, tree.identity))
        assert sums.root == pytest.approx(leaves.sum())
        assert mins.root == (leaves[leaves > 0].min() if (leaves > 0).any() else np.inf)
