"""NStepAccumulator: n-step returns across termination, truncation, autoreset steps and block edges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distdqn.core.nstep import NStepAccumulator, StepBlock
from distdqn.core.transitions import Transitions

GAMMA = 0.9


def block(rewards, terminated=None, truncated=None, valid=None, obs=None, next_obs=None) -> StepBlock:
    """A [T, num_envs] block. Observation of step t in env e is 100 * e + t (next_obs: + 0.5), so each
    transition's obs names the step that started it and next_obs the step that ended it."""
    rewards = np.asarray(rewards, dtype=np.float32)
    if rewards.ndim == 1:
        rewards = rewards[:, None]
    shape = rewards.shape
    t_index, e_index = np.indices(shape)
    if obs is None:
        obs = (100 * e_index + t_index).astype(np.float32)[..., None]
    if next_obs is None:
        next_obs = obs + 0.5

    def flags(x, default):
        if x is None:
            return np.full(shape, default)
        x = np.asarray(x, dtype=bool)
        return x[:, None] if x.ndim == 1 else x

    return StepBlock(obs=obs, action=(t_index % 2).astype(np.int64), reward=rewards, next_obs=next_obs,
                     terminated=flags(terminated, False), truncated=flags(truncated, False),
                     valid=flags(valid, True))


def as_rows(tr: Transitions) -> list[tuple]:
    """Transitions as sorted (obs, next_obs, reward, discount, terminated, action) rows."""
    rows = [(float(o[0]), float(n[0]), round(float(r), 4), round(float(d), 6), bool(t), int(a))
            for o, n, r, d, t, a in zip(tr.obs, tr.next_obs, tr.reward, tr.discount, tr.terminated, tr.action)]
    return sorted(rows)


def check(tr: Transitions, expected: list[tuple]) -> None:
    """expected: (start step, last step, reward, discount, terminated) for env 0."""
    want = sorted((float(s), last + 0.5, round(r, 4), round(d, 6), term, s % 2)
                  for s, last, r, d, term in expected)
    assert as_rows(tr) == want


def test_output_dtypes_and_shapes():
    tr = NStepAccumulator(3, GAMMA).add(block([1.0, 2.0, 3.0, 4.0]))
    assert tr.obs.shape == (2, 1) and tr.next_obs.shape == (2, 1)
    assert tr.action.dtype == np.int64 and tr.reward.dtype == np.float32
    assert tr.discount.dtype == np.float32 and tr.terminated.dtype == bool


def test_no_episode_end():
    acc = NStepAccumulator(3, GAMMA)
    tr = acc.add(block([1.0, 2.0, 3.0, 4.0, 5.0]))
    check(tr, [
        (0, 2, 1 + 0.9 * 2 + 0.81 * 3, 0.729, False),   # 5.23
        (1, 3, 2 + 0.9 * 3 + 0.81 * 4, 0.729, False),   # 7.94
        (2, 4, 3 + 0.9 * 4 + 0.81 * 5, 0.729, False),   # 10.65
    ])
    np.testing.assert_allclose(np.sort(tr.reward), [5.23, 7.94, 10.65], rtol=1e-6)
    np.testing.assert_allclose(tr.discount, 0.729, rtol=1e-6)


def test_termination_shortens_windows_and_never_bootstraps():
    # steps 0..3 end in a terminal state at 3; 4 is the reset step (reward must never count); 5.. new episode
    acc = NStepAccumulator(3, GAMMA)
    tr = acc.add(block([1.0, 2.0, 3.0, 4.0, 1000.0, 6.0],
                       terminated=[0, 0, 0, 1, 0, 0], valid=[1, 1, 1, 1, 0, 1]))
    check(tr, [
        (0, 2, 1 + 0.9 * 2 + 0.81 * 3, 0.729, False),
        (1, 3, 2 + 0.9 * 3 + 0.81 * 4, 0.729, True),
        (2, 3, 3 + 0.9 * 4, 0.81, True),
        (3, 3, 4.0, 0.9, True),
    ])


def test_truncation_bootstraps_from_the_final_observation():
    acc = NStepAccumulator(3, GAMMA)
    tr = acc.add(block([1.0, 2.0, 3.0, 4.0, 1000.0, 6.0],
                       truncated=[0, 0, 0, 1, 0, 0], valid=[1, 1, 1, 1, 0, 1]))
    check(tr, [
        (0, 2, 1 + 0.9 * 2 + 0.81 * 3, 0.729, False),
        (1, 3, 2 + 0.9 * 3 + 0.81 * 4, 0.729, False),
        (2, 3, 3 + 0.9 * 4, 0.81, False),
        (3, 3, 4.0, 0.9, False),
    ])
    # next_obs of the cut windows is the final observation of the episode (step 3's next_obs)
    cut = tr.obs[:, 0] >= 1
    np.testing.assert_array_equal(tr.next_obs[cut, 0], 3.5)


def test_invalid_reset_steps_never_start_or_extend_a_transition():
    acc = NStepAccumulator(3, GAMMA)
    rewards = [1.0, 1000.0, 3.0, 4.0, 5.0, 1000.0, 7.0, 8.0, 9.0]
    terminated = [1, 0, 0, 0, 1, 0, 0, 0, 0]
    valid = [1, 0, 1, 1, 1, 0, 1, 1, 1]
    tr = acc.add(block(rewards, terminated=terminated, valid=valid))
    check(tr, [
        (0, 0, 1.0, 0.9, True),
        (2, 4, 3 + 0.9 * 4 + 0.81 * 5, 0.729, True),
        (3, 4, 4 + 0.9 * 5, 0.81, True),
        (4, 4, 5.0, 0.9, True),
        (6, 8, 7 + 0.9 * 8 + 0.81 * 9, 0.729, False),
    ])
    assert not np.any(tr.reward >= 900)
    assert not np.any(np.isin(tr.obs[:, 0], [1.0, 5.0]))


def test_open_windows_complete_in_the_next_block():
    acc = NStepAccumulator(3, GAMMA)
    first = block([1.0, 2.0, 3.0, 4.0])
    acc.add(first)
    # second block continues the same episode: steps 4, 5 (obs 4, 5), then terminal at 5
    second = block([5.0, 6.0], terminated=[0, 1], obs=np.array([[[4.0]], [[5.0]]], np.float32))
    tr = acc.add(second)
    check(tr, [
        (2, 4, 3 + 0.9 * 4 + 0.81 * 5, 0.729, False),
        (3, 5, 4 + 0.9 * 5 + 0.81 * 6, 0.729, True),
        (4, 5, 5 + 0.9 * 6, 0.81, True),
        (5, 5, 6.0, 0.9, True),
    ])


def _split(steps: StepBlock, cuts: list[int]) -> list[StepBlock]:
    bounds = [0, *cuts, len(steps)]
    return [StepBlock(**{k: v[a:b].copy() for k, v in vars(steps).items()})
            for a, b in itertools.pairwise(bounds) if b > a]


def _episodes(num_steps: int, num_envs: int, rng: np.random.Generator, end_prob: float = 0.15) -> StepBlock:
    """A consistent stream: after a step that terminates or truncates, the next step is a reset step."""
    rewards = rng.integers(1, 10, size=(num_steps, num_envs)).astype(np.float32)
    ends = rng.random((num_steps, num_envs)) < end_prob
    is_term = rng.random((num_steps, num_envs)) < 0.5
    valid = np.ones((num_steps, num_envs), bool)
    terminated = np.zeros_like(valid)
    truncated = np.zeros_like(valid)
    for t in range(num_steps):
        if t > 0:
            valid[t] = ~(terminated[t - 1] | truncated[t - 1])
        terminated[t] = valid[t] & ends[t] & is_term[t]
        truncated[t] = valid[t] & ends[t] & ~is_term[t]
    rewards[~valid] = 1000.0  # reset steps' rewards must never be counted
    return block(rewards, terminated, truncated, valid)


def reference_nstep(steps: StepBlock, n: int, gamma: float) -> list[tuple]:
    """A plain per-transition loop over the whole stream; windows incomplete at the end are dropped."""
    rows = []
    num_steps, num_envs = steps.reward.shape
    for e in range(num_envs):
        for s in range(num_steps):
            if not steps.valid[s, e]:
                continue
            ret = 0.0
            for k in range(n):
                t = s + k
                if t >= num_steps:
                    break
                ret += gamma ** k * float(steps.reward[t, e])
                done = steps.terminated[t, e] or steps.truncated[t, e]
                if done or k == n - 1:
                    rows.append((float(steps.obs[s, e, 0]), float(steps.next_obs[t, e, 0]), round(ret, 4),
                                 round(gamma ** (k + 1), 6), bool(steps.terminated[t, e]),
                                 int(steps.action[s, e])))
                    break
    return sorted(rows)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_many_blocks_equal_one_big_block(n):
    rng = np.random.default_rng(n)
    steps = _episodes(60, 3, rng)
    one = NStepAccumulator(n, GAMMA).add(steps)
    acc = NStepAccumulator(n, GAMMA)
    parts = [acc.add(part) for part in _split(steps, [1, 2, 7, 8, 9, 20, 21, 40, 44])]
    many = Transitions.concatenate(parts)
    assert as_rows(many) == as_rows(one) == reference_nstep(steps, n, GAMMA)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5), num_envs=st.integers(1, 3),
       num_steps=st.integers(1, 40), cuts=st.lists(st.integers(1, 39), max_size=6))
def test_matches_reference_for_random_streams_and_splits(seed, n, num_envs, num_steps, cuts):
    steps = _episodes(num_steps, num_envs, np.random.default_rng(seed), end_prob=0.25)
    acc = NStepAccumulator(n, GAMMA)
    parts = [acc.add(part) for part in _split(steps, sorted({c for c in cuts if c < num_steps}))]
    assert as_rows(Transitions.concatenate(parts)) == reference_nstep(steps, n, GAMMA)


def test_caller_may_reuse_its_block_arrays():
    """An actor refills the same preallocated block each collect; the carried steps must not change."""
    steps = _episodes(12, 2, np.random.default_rng(0), end_prob=0.0)
    fresh = NStepAccumulator(3, GAMMA)
    expected = Transitions.concatenate([fresh.add(p) for p in _split(steps, [4, 8])])

    reused = NStepAccumulator(3, GAMMA)
    buffer = _split(steps, [4])[0]          # one [4, 2] block, refilled in place below
    outputs = []
    for part in _split(steps, [4, 8]):
        for name, value in vars(part).items():
            getattr(buffer, name)[...] = value
        outputs.append(reused.add(buffer))
    assert as_rows(Transitions.concatenate(outputs)) == as_rows(expected)


def test_n_equals_one_gives_one_transition_per_valid_step():
    acc = NStepAccumulator(1, GAMMA)
    tr = acc.add(block([1.0, 2.0, 1000.0, 4.0], terminated=[0, 1, 0, 0], valid=[1, 1, 0, 1]))
    check(tr, [(0, 0, 1.0, 0.9, False), (1, 1, 2.0, 0.9, True), (3, 3, 4.0, 0.9, False)])
    assert acc.state_dict() == {"carry": None}


def test_two_envs_ending_at_different_times():
    # env 0 terminates at step 1 (reset at 2); env 1 is truncated at step 3 (reset at 4)
    rewards = np.array([[1, 10], [2, 20], [1000, 30], [4, 40], [5, 1000]], np.float32)
    terminated = np.array([[0, 0], [1, 0], [0, 0], [0, 0], [0, 0]], bool)
    truncated = np.array([[0, 0], [0, 0], [0, 0], [0, 1], [0, 0]], bool)
    valid = np.array([[1, 1], [1, 1], [0, 1], [1, 1], [1, 0]], bool)
    acc = NStepAccumulator(3, GAMMA)
    tr = acc.add(block(rewards, terminated, truncated, valid))
    # (obs, next_obs, reward, discount, terminated, action): env 1 observations are 100 + t
    expected = sorted([
        (0.0, 1.5, round(1 + 0.9 * 2, 4), 0.81, True, 0),
        (1.0, 1.5, 2.0, 0.9, True, 1),
        (100.0, 102.5, round(10 + 0.9 * 20 + 0.81 * 30, 4), 0.729, False, 0),
        (101.0, 103.5, round(20 + 0.9 * 30 + 0.81 * 40, 4), 0.729, False, 1),
        (102.0, 103.5, round(30 + 0.9 * 40, 4), 0.81, False, 0),
        (103.0, 103.5, 40.0, 0.9, False, 1),
    ])
    assert as_rows(tr) == expected
    # env 0's new episode (steps 3, 4) is still open and completes with the next block
    tr2 = acc.add(block(np.array([[6, 60]], np.float32), obs=np.array([[[5.0], [105.0]]], np.float32)))
    assert as_rows(tr2) == [(3.0, 5.5, round(4 + 0.9 * 5 + 0.81 * 6, 4), 0.729, False, 1)]


def test_state_dict_round_trip_keeps_open_windows():
    steps = _episodes(20, 2, np.random.default_rng(3))
    first, second = _split(steps, [9])
    acc = NStepAccumulator(4, GAMMA)
    acc.add(first)
    restored = NStepAccumulator(4, GAMMA)
    restored.load_state_dict(acc.state_dict())
    assert as_rows(restored.add(second)) == as_rows(acc.add(second))


def test_n_must_be_positive():
    with pytest.raises(ValueError):
        NStepAccumulator(0, GAMMA)
