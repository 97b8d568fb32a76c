"""ReplayBuffer (uniform ring) and PrioritizedReplay (proportional, on the sum-tree)."""

from __future__ import annotations

import numpy as np
import pytest

from distdqn.core.replay import PrioritizedReplay, ReplayBuffer, make_replay
from distdqn.core.transitions import Batch, Transitions

OBS_SHAPE = (2,)


def numbered(start: int, count: int, obs_shape=OBS_SHAPE, obs_dtype=np.float32) -> Transitions:
    """``count`` transitions whose every field encodes its id (start, start + 1, ...)."""
    ids = np.arange(start, start + count)
    obs = np.broadcast_to(ids.reshape(-1, *([1] * len(obs_shape))), (count, *obs_shape)).astype(obs_dtype)
    return Transitions(
        obs=obs, action=(ids % 5).astype(np.int64), reward=ids.astype(np.float32),
        next_obs=(obs + 1).astype(obs_dtype), terminated=(ids % 3 == 0),
        discount=np.full(count, 0.99, np.float32),
    )


def stored_ids(replay: ReplayBuffer) -> np.ndarray:
    """The id in each filled row of the ring, by position."""
    return replay.state_dict()["reward"].astype(int)


def draw_counts(replay: ReplayBuffer, draws: int, batch_size: int, beta: float = 0.4) -> np.ndarray:
    counts = np.zeros(replay.capacity, dtype=np.int64)
    for _ in range(draws // batch_size):
        batch = replay.sample(batch_size, beta)
        counts += np.bincount(batch.indices, minlength=replay.capacity)
    return counts


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


# ---- ring buffer ----

def test_add_returns_ring_positions_and_overwrites_oldest():
    replay = ReplayBuffer(5, OBS_SHAPE, np.float32)
    np.testing.assert_array_equal(replay.add(numbered(0, 3)), [0, 1, 2])
    assert len(replay) == 3
    np.testing.assert_array_equal(replay.add(numbered(3, 4)), [3, 4, 0, 1])
    assert len(replay) == 5
    np.testing.assert_array_equal(stored_ids(replay), [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(replay.add(numbered(7, 1)), [2])
    np.testing.assert_array_equal(stored_ids(replay), [5, 6, 7, 3, 4])
    assert replay.total_added == 8
    assert len(replay.add(numbered(0, 0))) == 0


def test_stored_fields_follow_their_transition():
    replay = ReplayBuffer(4, OBS_SHAPE, np.float32)
    replay.add(numbered(10, 4))
    replay.add(numbered(14, 2))          # ids 14, 15 overwrite positions 0, 1
    rows = replay.state_dict()
    ids = np.array([14, 15, 12, 13])
    np.testing.assert_array_equal(rows["obs"][:, 0], ids)
    np.testing.assert_array_equal(rows["next_obs"][:, 1], ids + 1)
    np.testing.assert_array_equal(rows["action"], ids % 5)
    np.testing.assert_array_equal(rows["terminated"], ids % 3 == 0)


def test_batch_larger_than_capacity_keeps_its_newest_part():
    replay = ReplayBuffer(4, OBS_SHAPE, np.float32)
    replay.add(numbered(0, 1))                       # one old item, next write at position 1
    positions = replay.add(numbered(100, 10))        # ids 100..109; only 106..109 fit
    assert len(positions) == 4 and len(set(positions.tolist())) == 4
    assert len(replay) == 4 and replay.total_added == 11
    ids = stored_ids(replay)
    np.testing.assert_array_equal(np.sort(ids), [106, 107, 108, 109])
    np.testing.assert_array_equal(ids[positions], [106, 107, 108, 109])  # positions say where each went
    # the ring stays in order: the next write overwrites the oldest kept item (106)
    oldest_position = positions[0]
    np.testing.assert_array_equal(replay.add(numbered(200, 1)), [oldest_position])
    np.testing.assert_array_equal(np.sort(stored_ids(replay)), [107, 108, 109, 200])


def test_sample_shapes_and_dtypes():
    replay = ReplayBuffer(16, (3, 4), np.uint8, seed=1)
    replay.add(numbered(0, 10, obs_shape=(3, 4), obs_dtype=np.uint8))
    batch = replay.sample(7)
    assert isinstance(batch, Batch)
    assert batch.obs.shape == (7, 3, 4) and batch.obs.dtype == np.uint8
    assert batch.next_obs.shape == (7, 3, 4) and batch.next_obs.dtype == np.uint8
    assert batch.action.shape == (7,) and batch.action.dtype == np.int64
    assert batch.reward.dtype == np.float32 and batch.discount.dtype == np.float32
    assert batch.terminated.dtype == bool
    assert batch.indices.shape == (7,) and batch.indices.dtype == np.int64
    assert batch.weights.dtype == np.float32
    np.testing.assert_array_equal(batch.weights, 1.0)
    # each row is the transition stored at its index
    np.testing.assert_array_equal(batch.reward, batch.indices)
    np.testing.assert_array_equal(batch.obs[:, 0, 0], batch.indices)


def test_uniform_sample_only_filled_rows_and_covers_them():
    replay = ReplayBuffer(100, OBS_SHAPE, np.float32, seed=3)
    replay.add(numbered(0, 7))
    counts = draw_counts(replay, 7000, 50)
    assert counts[7:].sum() == 0
    assert chi_square(counts[:7], np.full(7, 1 / 7)) < 22.46   # chi2(df=6) 99.9% quantile


def test_empty_replay_cannot_sample():
    with pytest.raises(ValueError):
        ReplayBuffer(4, OBS_SHAPE, np.float32).sample(2)
    with pytest.raises(ValueError):
        PrioritizedReplay(4, OBS_SHAPE, np.float32).sample(2)


def test_make_replay_picks_the_kind():
    assert type(make_replay(False, 4, OBS_SHAPE, np.float32, 0)) is ReplayBuffer
    replay = make_replay(True, 4, OBS_SHAPE, np.float32, 0, alpha=0.3, priority_eps=1e-3)
    assert isinstance(replay, PrioritizedReplay) and replay.alpha == 0.3 and replay.priority_eps == 1e-3


# ---- prioritized ----

@pytest.mark.parametrize("capacity,stored", [(16, 16), (13, 13), (13, 7), (10, 25)])
def test_prioritized_with_equal_priorities_samples_like_uniform(capacity, stored):
    replay = PrioritizedReplay(capacity, OBS_SHAPE, np.float32, seed=0, alpha=0.6)
    replay.add(numbered(0, stored))
    n = len(replay)
    counts = draw_counts(replay, 16_000, 64)
    assert counts[n:].sum() == 0
    assert chi_square(counts[:n], np.full(n, 1 / n)) < 40.0   # chi2(df<=15) 99.9% quantile is 37.7
    batch = replay.sample(32, beta=0.7)
    np.testing.assert_allclose(batch.weights, 1.0, rtol=1e-6)


def test_importance_weights_hand_computed():
    # alpha = 0.5, priorities 1, 4, 9, 16 -> p^alpha = 1, 2, 3, 4, P = .1, .2, .3, .4, N = 4
    # beta = 1:   w = (N P)^-1 / max = (1/.4, 1/.8, 1/1.2, 1/1.6) / 2.5 = 1, 1/2, 1/3, 1/4
    # beta = 0.5: w = sqrt(.4 / (N P)) = 1, sqrt(1/2), sqrt(1/3), 1/2
    # capacity 6: the two empty slots must not count in the maximum weight
    replay = PrioritizedReplay(6, OBS_SHAPE, np.float32, seed=5, alpha=0.5, priority_eps=1e-9)
    replay.add(numbered(0, 4), priorities=np.array([1.0, 4.0, 9.0, 16.0]))
    expected = {1.0: np.array([1.0, 1 / 2, 1 / 3, 1 / 4]),
                0.5: np.array([1.0, np.sqrt(1 / 2), np.sqrt(1 / 3), 1 / 2])}
    for beta, w in expected.items():
        for _ in range(20):   # batches of one: the max is over all stored items, not over the batch
            batch = replay.sample(1, beta)
            np.testing.assert_allclose(batch.weights, w[batch.indices], rtol=1e-6)
        batch = replay.sample(40, beta)
        assert set(batch.indices.tolist()) == {0, 1, 2, 3}
        np.testing.assert_allclose(batch.weights, w[batch.indices], rtol=1e-6)
    # sampling frequencies follow P = .1, .2, .3, .4
    counts = draw_counts(replay, 20_000, 100)
    np.testing.assert_allclose(counts[:4] / counts.sum(), [0.1, 0.2, 0.3, 0.4], atol=0.01)
    assert counts[4:].sum() == 0


def test_update_priorities_changes_sampling_in_proportion():
    replay = PrioritizedReplay(8, OBS_SHAPE, np.float32, seed=2, alpha=1.0, priority_eps=1e-9)
    replay.add(numbered(0, 4))
    # |td| -> p = |td| (+ tiny eps): 1, 1, 1, 5 -> P = 1/8, 1/8, 1/8, 5/8
    replay.update_priorities(np.array([0, 1, 2, 3]), np.array([1.0, -1.0, 1.0, -5.0]))
    freq = draw_counts(replay, 20_000, 100)[:4] / 20_000
    np.testing.assert_allclose(freq, [1 / 8, 1 / 8, 1 / 8, 5 / 8], atol=0.012)
    # alpha = 0.5 squashes the same priorities: sqrt -> 1, 1, 1, sqrt(5)
    replay2 = PrioritizedReplay(8, OBS_SHAPE, np.float32, seed=2, alpha=0.5, priority_eps=1e-9)
    replay2.add(numbered(0, 4))
    replay2.update_priorities(np.array([3, 3]), np.array([100.0, 5.0]))   # repeated index: last wins
    p = np.array([1, 1, 1, np.sqrt(5)])
    freq = draw_counts(replay2, 20_000, 100)[:4] / 20_000
    np.testing.assert_allclose(freq, p / p.sum(), atol=0.012)


def test_new_items_get_max_priority():
    replay = PrioritizedReplay(8, OBS_SHAPE, np.float32, seed=4, alpha=1.0, priority_eps=1e-9)
    replay.add(numbered(0, 2))                                   # default max priority 1
    replay.update_priorities(np.array([0, 1]), np.array([3.0, 1.0]))
    replay.add(numbered(2, 1))                                   # gets 3, the max seen so far
    # P = 3/7, 1/7, 3/7; beta = 1 -> w_i = P_min / P_i = 1/3, 1, 1/3
    batch = replay.sample(60, beta=1.0)
    assert set(batch.indices.tolist()) == {0, 1, 2}
    np.testing.assert_allclose(batch.weights, np.array([1 / 3, 1.0, 1 / 3])[batch.indices], rtol=1e-6)
    freq = draw_counts(replay, 14_000, 70)[:3] / 14_000
    np.testing.assert_allclose(freq, [3 / 7, 1 / 7, 3 / 7], atol=0.012)


def test_priorities_supplied_at_add_are_used():
    replay = PrioritizedReplay(8, OBS_SHAPE, np.float32, seed=6, alpha=1.0, priority_eps=1e-9)
    replay.add(numbered(0, 3), priorities=np.array([2.0, -6.0, 0.0]))   # |p| + eps
    freq = draw_counts(replay, 16_000, 80)[:3] / 16_000
    np.testing.assert_allclose(freq, [0.25, 0.75, 0.0], atol=0.012)
    # a later default-priority item gets the max supplied so far (6)
    replay.add(numbered(3, 1))
    freq = draw_counts(replay, 14_000, 70)[:4] / 14_000
    np.testing.assert_allclose(freq, [2 / 14, 6 / 14, 0.0, 6 / 14], atol=0.012)


def test_overwritten_slot_takes_the_new_priority():
    replay = PrioritizedReplay(2, OBS_SHAPE, np.float32, seed=7, alpha=1.0, priority_eps=1e-9)
    replay.add(numbered(0, 2), priorities=np.array([9.0, 1.0]))
    replay.add(numbered(2, 1), priorities=np.array([1.0]))    # overwrites position 0 (priority 9)
    freq = draw_counts(replay, 10_000, 50)[:2] / 10_000
    np.testing.assert_allclose(freq, [0.5, 0.5], atol=0.012)


def _assert_batches_equal(a: Batch, b: Batch) -> None:
    for name, value in a.as_dict().items():
        np.testing.assert_array_equal(value, getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.weights, b.weights)


@pytest.mark.parametrize("prioritized", [False, True])
def test_state_dict_round_trip_gives_identical_future_samples(prioritized):
    kwargs = {"alpha": 0.7} if prioritized else {}
    cls = PrioritizedReplay if prioritized else ReplayBuffer
    replay = cls(10, OBS_SHAPE, np.float32, seed=11, **kwargs)
    replay.add(numbered(0, 13))                 # wrapped
    if prioritized:
        replay.update_priorities(np.arange(10), np.linspace(0.1, 3.0, 10))
    replay.sample(5)                            # advance the rng
    state = replay.state_dict()

    restored = cls(10, OBS_SHAPE, np.float32, seed=999, **kwargs)
    restored.load_state_dict(state)
    assert len(restored) == len(replay) and restored.total_added == replay.total_added
    for _ in range(3):
        _assert_batches_equal(replay.sample(8), restored.sample(8))
    # writes continue at the same position
    np.testing.assert_array_equal(replay.add(numbered(50, 3)), restored.add(numbered(50, 3)))
    if prioritized:
        replay.update_priorities(np.array([1, 2]), np.array([7.0, 0.2]))
        restored.update_priorities(np.array([1, 2]), np.array([7.0, 0.2]))
    _assert_batches_equal(replay.sample(8), restored.sample(8))


def test_load_state_dict_rejects_a_different_capacity():
    replay = ReplayBuffer(10, OBS_SHAPE, np.float32)
    replay.add(numbered(0, 3))
    with pytest.raises(ValueError):
        ReplayBuffer(11, OBS_SHAPE, np.float32).load_state_dict(replay.state_dict())
    with pytest.raises(ValueError):
        ReplayBuffer(10, (3,), np.float32).load_state_dict(replay.state_dict())


def test_sample_batches_draws_like_separate_samples_and_returns_views():
    """Several batches at once: right shapes, weights per batch as for one batch, indices in range."""
    from distdqn.core.replay import PrioritizedReplay, ReplayBuffer
    from distdqn.core.transitions import Transitions

    for cls in (ReplayBuffer, PrioritizedReplay):
        replay = cls(100, (2,), np.float32, seed=1)
        n = 60
        replay.add(Transitions(obs=np.arange(2 * n, dtype=np.float32).reshape(n, 2),
                               action=np.arange(n) % 3, reward=np.arange(n, dtype=np.float32),
                               next_obs=np.zeros((n, 2), np.float32), terminated=np.zeros(n, bool),
                               discount=np.ones(n, np.float32)))
        if cls is PrioritizedReplay:
            replay.update_priorities(np.arange(n), np.linspace(0.1, 5.0, n))
        batches = replay.sample_batches(5, 16, beta=0.5)
        assert len(batches) == 5
        for batch in batches:
            assert batch.obs.shape == (16, 2) and batch.indices.shape == (16,)
            assert (batch.indices < n).all()
            np.testing.assert_array_equal(batch.reward, batch.indices.astype(np.float32))
            np.testing.assert_array_equal(batch.obs[:, 0], 2 * batch.indices)
            assert batch.weights.max() <= 1.0 + 1e-6
        # one sample(B) is exactly the first of sample_batches(1, B) from the same RNG state
        state = replay.state_dict()
        single = replay.sample(16, beta=0.5)
        replay.load_state_dict(state)
        np.testing.assert_array_equal(replay.sample_batches(1, 16, beta=0.5)[0].indices, single.indices)

