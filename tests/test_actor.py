"""Actor over real Gymnasium vector envs: the NEXT_STEP autoreset rule, episode statistics, evaluate."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from distdqn.core.actor import Actor, evaluate
from distdqn.core.transitions import Transitions

TAU = 0.02   # CartPole's Euler step: x' = x + tau * x_dot, theta' = theta + tau * theta_dot


class RandomQ:
    """Q-values that carry no preference; with epsilon = 1 the actor acts uniformly at random."""

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros((len(obs), 2), np.float32)


class Balancer:
    """Keeps the pole up for a long time: push towards the side the pole is falling."""

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        push_right = (obs[:, 2] + 0.5 * obs[:, 3]) > 0
        return np.stack([~push_right, push_right], axis=1).astype(np.float32)


class Recorder(gym.vector.VectorWrapper):
    """Records every vector step the actor takes (obs before, next obs, flags), independently of the actor."""

    def __init__(self, env: gym.vector.VectorEnv):
        super().__init__(env)
        self.steps: list[dict[str, np.ndarray]] = []
        self._obs = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._obs = obs.copy()
        return obs, info

    def step(self, actions):
        next_obs, reward, terminated, truncated, info = self.env.step(actions)
        self.steps.append({"obs": self._obs, "next_obs": next_obs.copy(), "reward": np.array(reward),
                           "terminated": np.array(terminated), "truncated": np.array(truncated)})
        self._obs = next_obs.copy()
        return next_obs, reward, terminated, truncated, info

    def stacked(self) -> dict[str, np.ndarray]:
        return {k: np.stack([s[k] for s in self.steps]) for k in self.steps[0]}

    def real_steps(self) -> tuple[dict[str, np.ndarray], int]:
        """[K, ...] rows of the steps that are transitions (not the reset step after an episode end)."""
        rec = self.stacked()
        done = rec["terminated"] | rec["truncated"]
        reset_step = np.zeros_like(done)
        reset_step[1:] = done[:-1]
        keep = ~reset_step
        return {k: v[keep] for k, v in rec.items()}, int(reset_step.sum())


def native(num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    return gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)


def sync(num_envs: int, max_episode_steps: int | None = None) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1", max_episode_steps=max_episode_steps)] * num_envs)


def is_physics_step(obs: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """True where next_obs follows obs by one Euler step of the cart and the pole."""
    x_ok = np.abs(next_obs[:, 0] - (obs[:, 0] + TAU * obs[:, 1])) < 1e-5
    theta_ok = np.abs(next_obs[:, 2] - (obs[:, 2] + TAU * obs[:, 3])) < 1e-5
    velocity_ok = (np.abs(next_obs[:, 1] - obs[:, 1]) < 0.5) & (np.abs(next_obs[:, 3] - obs[:, 3]) < 1.0)
    return x_ok & theta_ok & velocity_ok


def collect_all(actor: Actor, blocks: list[int], epsilon=1.0):
    rollouts = [actor.collect(n, epsilon) for n in blocks]
    transitions = Transitions.concatenate([r.transitions for r in rollouts])
    returns = np.concatenate([r.episode_returns for r in rollouts])
    lengths = np.concatenate([r.episode_lengths for r in rollouts])
    return rollouts, transitions, returns, lengths


def rows(obs: np.ndarray, next_obs: np.ndarray) -> list[tuple]:
    return sorted(map(tuple, np.concatenate([obs, next_obs], axis=1).round(6).tolist()))


ENVS = {"native": lambda: native(4), "sync": lambda: sync(4)}


@pytest.mark.parametrize("make_env", ENVS.values(), ids=ENVS.keys())
def test_autoreset_steps_are_never_stored(make_env):
    env = Recorder(make_env())
    actor = Actor(env, RandomQ(), n_step=1, gamma=0.99, seed=0)
    rollouts, tr, returns, _ = collect_all(actor, [100, 100])
    assert len(returns) >= 20                              # many episodes ended, so many resets happened
    # every stored transition is a real physics step
    assert np.all(is_physics_step(tr.obs, tr.next_obs))
    # ... and the check has teeth: the raw vector steps include reset jumps, which it rejects
    rec = env.stacked()
    raw_obs = rec["obs"].reshape(-1, 4)
    raw_next = rec["next_obs"].reshape(-1, 4)
    raw_ok = is_physics_step(raw_obs, raw_next)
    done = rec["terminated"] | rec["truncated"]
    reset_step = np.zeros_like(done)
    reset_step[1:] = done[:-1]
    assert reset_step.sum() > 0
    assert not np.any(raw_ok[reset_step.reshape(-1)])
    assert np.all(raw_ok[~reset_step.reshape(-1)])
    # the stored transitions are exactly the non-reset steps
    real, num_reset_steps = env.real_steps()
    assert rows(tr.obs, tr.next_obs) == rows(real["obs"], real["next_obs"])
    vector_steps = 200
    assert len(tr) == sum(r.env_steps for r in rollouts) == vector_steps * 4 - num_reset_steps
    np.testing.assert_array_equal(tr.reward, 1.0)
    np.testing.assert_allclose(tr.discount, 0.99, rtol=1e-6)


def test_env_steps_per_rollout_exclude_reset_steps():
    env = Recorder(native(3))
    actor = Actor(env, RandomQ(), n_step=1, gamma=0.99, seed=1)
    seen = 0
    for n in [7, 13, 1, 30, 49]:
        rollout = actor.collect(n, 1.0)
        rec = env.stacked()
        done = rec["terminated"] | rec["truncated"]
        reset_step = np.zeros_like(done)
        reset_step[1:] = done[:-1]
        expected = int((~reset_step[seen:seen + n]).sum())
        assert rollout.env_steps == len(rollout.transitions) == expected
        seen += n


def test_terminated_transitions_are_flagged_and_do_not_continue():
    env = Recorder(native(4))
    actor = Actor(env, RandomQ(), n_step=1, gamma=0.99, seed=2)
    _, tr, _, _ = collect_all(actor, [150])
    real, _ = env.real_steps()
    assert tr.terminated.sum() == real["terminated"].sum() > 0
    # a terminal next_obs is outside CartPole's bounds (|x| > 2.4 or |theta| > 12 degrees)
    out = (np.abs(tr.next_obs[:, 0]) > 2.4) | (np.abs(tr.next_obs[:, 2]) > 12 * 2 * np.pi / 360)
    np.testing.assert_array_equal(out, tr.terminated)


@pytest.mark.parametrize("make_env", ENVS.values(), ids=ENVS.keys())
def test_episode_returns_equal_lengths_and_sum_across_blocks(make_env):
    env = Recorder(make_env())
    actor = Actor(env, RandomQ(), n_step=1, gamma=0.99, seed=3)
    _, _, returns, lengths = collect_all(actor, [3, 5, 1, 7, 2, 11, 4, 9, 6, 8] * 4)
    # independent reference: episode lengths in order of ending, from the recorded flags
    rec = env.stacked()
    done = rec["terminated"] | rec["truncated"]
    reset_step = np.zeros_like(done)
    reset_step[1:] = done[:-1]
    ended, running = [], np.zeros(done.shape[1], int)
    for t in range(len(done)):
        running += ~reset_step[t]
        for e in np.nonzero(done[t])[0]:
            ended.append(running[e])
            running[e] = 0
    assert len(ended) >= 10
    # most episodes span several of these small blocks
    assert np.mean(ended) > 8
    np.testing.assert_array_equal(lengths, ended)
    np.testing.assert_array_equal(returns, lengths)   # CartPole: reward 1 per step


def test_truncated_episodes_store_terminated_false_and_the_final_observation():
    env = Recorder(sync(2, max_episode_steps=10))
    actor = Actor(env, Balancer(), n_step=1, gamma=0.9, seed=5)
    _, tr, returns, lengths = collect_all(actor, [13, 9, 20], epsilon=0.0)
    rec = env.stacked()
    assert rec["truncated"].sum() >= 6 and rec["terminated"].sum() == 0
    np.testing.assert_array_equal(lengths, 10)
    np.testing.assert_array_equal(returns, 10.0)
    assert not tr.terminated.any()
    assert np.all(is_physics_step(tr.obs, tr.next_obs))       # the final obs, not the reset obs
    # the transitions that ended by truncation bootstrap from the recorded final observation
    final_obs = rec["next_obs"][rec["truncated"]]
    stored = {tuple(o) for o in tr.next_obs.round(6).tolist()}
    assert all(tuple(o) in stored for o in final_obs.round(6).tolist())
    np.testing.assert_allclose(tr.discount, 0.9, rtol=1e-6)
    # 42 vector steps x 2 envs minus one reset step after every truncation except ones on the last step
    assert len(tr) == 84 - int(rec["truncated"][:-1].sum())


def test_truncation_with_native_time_limit():
    env = Recorder(native(2, max_episode_steps=20))
    actor = Actor(env, Balancer(), n_step=1, gamma=0.9, seed=6)
    _, tr, _, lengths = collect_all(actor, [25, 25], epsilon=0.0)
    np.testing.assert_array_equal(lengths, 20)
    assert len(lengths) >= 4
    assert not tr.terminated.any()
    assert np.all(is_physics_step(tr.obs, tr.next_obs))


def reference_nstep(rec: dict[str, np.ndarray], n: int, gamma: float) -> list[tuple]:
    """n-step transitions of a recorded stream by a plain loop; windows still open at the end are dropped."""
    done = rec["terminated"] | rec["truncated"]
    valid = np.ones_like(done)
    valid[1:] = ~done[:-1]
    num_steps, num_envs = done.shape
    out = []
    for e in range(num_envs):
        for s in range(num_steps):
            if not valid[s, e]:
                continue
            ret = 0.0
            for k in range(min(n, num_steps - s)):
                t = s + k
                ret += gamma ** k * float(rec["reward"][t, e])
                if done[t, e] or k == n - 1:
                    out.append((*rec["obs"][s, e], *rec["next_obs"][t, e], ret, gamma ** (k + 1),
                                float(rec["terminated"][t, e])))
                    break
    return sorted(map(tuple, np.round(np.array(out, dtype=np.float64), 4).tolist()))


def transition_rows(tr: Transitions) -> list[tuple]:
    data = np.concatenate([tr.obs, tr.next_obs, tr.reward[:, None], tr.discount[:, None],
                           tr.terminated[:, None]], axis=1).astype(np.float64)
    return sorted(map(tuple, np.round(data, 4).tolist()))


@pytest.mark.parametrize("blocks", [[40], [10, 10, 10, 10], [3, 3, 5, 5, 1, 1, 7, 7, 8]], ids=str)
def test_n_step_transitions_across_blocks_match_a_reference(blocks):
    """With n > 1, windows open at a block's end complete in the next collect with the right data."""
    env = Recorder(native(2))
    actor = Actor(env, RandomQ(), n_step=3, gamma=0.9, seed=7)
    _, tr, _, _ = collect_all(actor, blocks)
    assert transition_rows(tr) == reference_nstep(env.stacked(), 3, 0.9)


def test_n_step_actor_rewards_and_discounts():
    env = Recorder(native(3))
    actor = Actor(env, RandomQ(), n_step=3, gamma=0.5, seed=8)
    _, tr, _, _ = collect_all(actor, [60])
    # CartPole: 1 + 0.5 + 0.25 for a full window, shorter only when the episode ended inside it
    full = tr.discount == np.float32(0.125)
    np.testing.assert_allclose(tr.reward[full], 1.75)
    np.testing.assert_allclose(tr.reward[tr.discount == np.float32(0.25)], 1.5)
    np.testing.assert_allclose(tr.reward[tr.discount == np.float32(0.5)], 1.0)
    assert np.all(tr.terminated[~full])          # no truncation in CartPole within 60 steps
    assert set(np.unique(tr.discount).tolist()) <= {0.125, 0.25, 0.5}


def test_actor_rejects_same_step_autoreset():
    env = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    with pytest.raises(ValueError):
        Actor(env, RandomQ(), 1, 0.99, seed=0)


@pytest.mark.parametrize("num_episodes,num_envs", [(7, 4), (3, 4), (10, 1), (12, 3)])
def test_evaluate_returns_exactly_num_episodes(num_episodes, num_envs):
    env = Recorder(native(num_envs))
    returns = evaluate(RandomQ(), env, num_episodes, epsilon=1.0, seed=9)
    assert returns.shape == (num_episodes,)
    # every return is the length of a real episode of that run
    rec = env.stacked()
    done = rec["terminated"] | rec["truncated"]
    reset_step = np.zeros_like(done)
    reset_step[1:] = done[:-1]
    lengths, running = [], np.zeros(num_envs, int)
    for t in range(len(done)):
        running += ~reset_step[t]
        for e in np.nonzero(done[t])[0]:
            lengths.append(running[e])
            running[e] = 0
    assert set(returns.astype(int).tolist()) <= set(lengths)


def test_evaluate_greedy_balancer_gets_the_time_limit():
    returns = evaluate(Balancer(), sync(2, max_episode_steps=30), 5, epsilon=0.0, seed=0)
    np.testing.assert_array_equal(returns, 30.0)
