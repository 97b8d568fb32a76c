"""Sampling two replay shards is sampling one replay: the same distribution over transitions, the
same importance weights, the same strata, with one learner or a group of two (core/shards.py).
A statistical test that the wrong scheme (each shard given an equal share of every batch) fails."""

from __future__ import annotations

import numpy as np
import pytest

from distdqn.core.replay import PrioritizedReplay, ReplayBuffer
from distdqn.core.shards import combine, route, split_by_mass, stratified_fractions
from distdqn.core.transitions import Transitions

N, CAPACITY, BATCH, ALPHA, BETA = 60, 64, 32, 0.6, 0.4


def transitions(ids: np.ndarray) -> Transitions:
    """Transitions told apart by their reward (= their id)."""
    n = len(ids)
    return Transitions(obs=np.repeat(ids[:, None], 2, 1).astype(np.float32), action=np.zeros(n, np.int64),
                       reward=ids.astype(np.float32), next_obs=np.zeros((n, 2), np.float32),
                       terminated=np.zeros(n, bool), discount=np.ones(n, np.float32))


def priorities() -> np.ndarray:
    """Priorities of ids 0..N-1: the first third (shard 0 below) holds most of the mass."""
    rng = np.random.default_rng(7)
    p = rng.uniform(0.1, 1.0, N)
    p[: N // 3] *= 6.0
    return p


def one_replay(prioritized: bool = True):
    replay = (PrioritizedReplay(CAPACITY, (2,), np.float32, seed=1, alpha=ALPHA) if prioritized
              else ReplayBuffer(CAPACITY, (2,), np.float32, seed=1))
    replay.add(transitions(np.arange(N)), priorities())
    return replay


def two_shards(prioritized: bool = True):
    """The same N transitions and priorities, ids 0 .. N/3-1 in shard 0 and the rest in shard 1."""
    shards = []
    for k, ids in enumerate((np.arange(N // 3), np.arange(N // 3, N))):
        shard = (PrioritizedReplay(CAPACITY, (2,), np.float32, seed=10 + k, alpha=ALPHA) if prioritized
                 else ReplayBuffer(CAPACITY, (2,), np.float32, seed=10 + k))
        shard.add(transitions(ids), priorities()[ids])
        shards.append(shard)
    return shards


def sharded_sample(shards, rng, num_batches: int, rank: int = 0, world: int = 1, equal_split: bool = False):
    """What a learner does with K shards: fractions of the total mass, split by mass (or, the wrong
    scheme, half of every batch from each shard), drawn in each shard, combined."""
    fractions = stratified_fractions(rng, num_batches, BATCH, rank, world)
    masses = np.array([s.mass for s in shards])
    if equal_split:
        flat = fractions.reshape(-1)
        half = np.arange(len(flat)) % 2
        split = [(np.flatnonzero(half == k), rng.random(int((half == k).sum()))) for k in range(2)]
    else:
        split = split_by_mass(fractions, masses)
    parts = []
    for shard, (positions, local) in zip(shards, split, strict=True):
        batch, leaves = shard.sample_at(local) if len(positions) else (None, np.zeros(0))
        parts.append((positions, batch, leaves))
    return combine(parts, fractions.size, CAPACITY, min(s.min_leaf for s in shards), BETA)


def chi2_critical(dof: int, z: float = 3.09) -> float:
    """The chi-square quantile at p = 0.999 (Wilson-Hilferty)."""
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


def chi2(counts: np.ndarray, expected: np.ndarray) -> float:
    return float(((counts - expected) ** 2 / expected).sum())


def expected_probs() -> np.ndarray:
    scaled = np.power(np.abs(priorities()) + 1e-6, ALPHA)
    return scaled / scaled.sum()


def test_a_target_lands_in_the_shard_whose_range_holds_it():
    split = split_by_mass(np.array([0.0, 0.2, 0.25, 0.6, 0.99]), np.array([1.0, 0.0, 3.0]))
    assert [p.tolist() for p, _ in split] == [[0, 1], [], [2, 3, 4]]
    np.testing.assert_allclose(split[0][1], [0.0, 0.8])                    # 0.2 * 4 = 0.8 of shard 0's 1
    np.testing.assert_allclose(split[2][1], [0.0, (2.4 - 1) / 3, (3.96 - 1) / 3])


def test_priorities_go_back_to_the_shard_they_came_from():
    per_shard = route(np.array([3, 64 + 5, 64 + 0, 63]), np.array([1.0, 2.0, 3.0, 4.0]), 64, 2)
    assert per_shard[0][0].tolist() == [3, 63] and per_shard[0][1].tolist() == [1.0, 4.0]
    assert per_shard[1][0].tolist() == [5, 0] and per_shard[1][1].tolist() == [2.0, 3.0]


@pytest.mark.parametrize("world", [1, 2])
def test_two_shards_sample_like_one_replay_with_the_same_transitions_and_priorities(world):
    """Draws by id from 2 shards (one learner, or a group of 2 sharing each batch) and from one
    replay: each fits P(i) = p_i^alpha / sum p^alpha (chi-square, p = 0.001), and the two fit each
    other; every draw's importance weight equals the one replay's for that transition."""
    rng, draws = np.random.default_rng(0), 4000
    one = one_replay()
    ids_one = one.sample_stacked(draws, BATCH, BETA)
    counts_one = np.bincount(ids_one.reward.astype(int), minlength=N)
    shards = two_shards()
    sampled = [sharded_sample(shards, rng, draws, r, world) for r in range(world)]
    ids = np.concatenate([b.reward.astype(int) for b in sampled])
    counts = np.bincount(ids, minlength=N)
    expected = expected_probs() * len(ids)
    assert chi2(counts, expected) < chi2_critical(N - 1)
    assert chi2(counts_one, expected_probs() * len(ids_one.reward)) < chi2_critical(N - 1)
    # and the shards' share of the draws is shard 0's share of the mass
    assert abs(np.mean(ids < N // 3) - expected_probs()[: N // 3].sum()) < 0.01
    # weights: a function of the transition alone, the same as one replay's
    weight_of = dict(zip(ids_one.reward.astype(int).tolist(), ids_one.weights.tolist(), strict=True))
    for batch in sampled:
        for i, w in zip(batch.reward.astype(int).tolist(), batch.weights.tolist(), strict=True):
            assert w == pytest.approx(weight_of[i], rel=1e-5)


def test_equal_shares_of_each_batch_from_each_shard_fail_the_same_test():
    """The test above can fail: giving each shard half of every batch (what sampling each shard
    on its own would do) over-samples the light shard, and the chi-square sees it."""
    rng = np.random.default_rng(0)
    batch = sharded_sample(two_shards(), rng, 4000, equal_split=True)
    counts = np.bincount(batch.reward.astype(int), minlength=N)
    assert chi2(counts, expected_probs() * len(batch.reward)) > 10 * chi2_critical(N - 1)


def test_a_group_of_two_learners_draws_one_replays_strata():
    """Learner r takes segments r, r + 2, ...: between them, one draw in each of the B segments."""
    rng = np.random.default_rng(3)
    both = np.sort(np.concatenate([stratified_fractions(rng, 1, BATCH, r, 2)[0] for r in range(2)]))
    assert np.array_equal(np.floor(both * BATCH), np.arange(BATCH))
    with pytest.raises(ValueError, match="cannot share"):
        stratified_fractions(rng, 1, BATCH, 0, 3)


def test_uniform_shards_sample_uniformly_in_proportion_to_their_sizes():
    rng = np.random.default_rng(1)
    batch = sharded_sample(two_shards(prioritized=False), rng, 3000)
    counts = np.bincount(batch.reward.astype(int), minlength=N)
    assert chi2(counts, np.full(N, len(batch.reward) / N)) < chi2_critical(N - 1)
    assert np.all(batch.weights == 1.0)


def test_indices_are_global_slots_in_draw_order():
    shards = two_shards()
    batch = sharded_sample(shards, np.random.default_rng(2), 3)
    for slot, reward in zip(batch.indices.tolist(), batch.reward.tolist(), strict=True):
        shard, position = divmod(slot, CAPACITY)
        assert shards[shard]._reward[position] == reward
    # rows come back in draw order: segment j of a batch lies before segment j + 1 in the shards
    # laid end to end (shard 0's ids, then shard 1's), so ids never decrease within a batch
    assert np.all(np.diff(batch.reward.reshape(3, BATCH), axis=1) >= 0)
