"""The Actor: steps a Gymnasium vector env epsilon-greedily and returns n-step transitions.

Gymnasium 1.x vector envs autoreset a finished sub-env on the *next* step (NEXT_STEP): the step after
``terminated | truncated`` returns the first observation of the new episode with reward 0, and is not
a transition. This module is the one place that knows it: such steps are marked invalid and never
become transitions, and bootstrapping is cut only by ``terminated``, never by ``truncated``.

Observations and rewards must be finite: a NaN or infinity is an error naming the env and the
field (``non_finite="error"``), or its transitions are dropped and counted (``"skip"``: the steps
counted in ``non_finite_skipped`` and each Rollout's ``non_finite_steps``, their rewards left out of episode returns).

The per-step loop only selects actions, steps the env and copies the results into preallocated
[T, num_envs] arrays; n-step returns and episode statistics are computed once per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from distdqn.core.finite import finite_rows
from distdqn.core.nstep import NStepAccumulator, StepBlock
from distdqn.core.policy import epsilon_greedy
from distdqn.core.transitions import Transitions
from distdqn.errors import NonFiniteError


@dataclass
class Rollout:
    transitions: Transitions
    env_steps: int                # transitions experienced (reset steps excluded), before n-step
    episode_returns: np.ndarray   # undiscounted returns of the episodes that ended in this rollout
    episode_lengths: np.ndarray
    non_finite_steps: int = 0     # steps with a NaN or infinite next observation or reward (skipped)


def _check_autoreset(env: gym.vector.VectorEnv) -> None:
    mode = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
    if mode != gym.vector.AutoresetMode.NEXT_STEP:
        raise ValueError(f"the Actor expects NEXT_STEP autoreset, the env uses {mode}")


class Actor:
    """Collects experience from one vector env with a policy that maps observations to Q-values."""

    def __init__(self, env: gym.vector.VectorEnv, policy: Any, n_step: int, gamma: float, seed: int,
                 non_finite: str = "error", env_name: str = "the env"):
        _check_autoreset(env)
        if non_finite not in ("error", "skip"):
            raise ValueError(f"non_finite must be error or skip, not {non_finite!r}")
        self.non_finite, self.env_name = non_finite, env_name
        self.non_finite_skipped = 0   # steps whose next observation or reward was NaN or infinite
        self.env = env
        self.policy = policy
        self.num_envs = env.num_envs
        self.num_actions = int(env.single_action_space.n)
        self.rng = np.random.default_rng(seed)
        self.nstep = NStepAccumulator(n_step, gamma)
        self._obs, _ = env.reset(seed=seed)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)   # next step of this sub-env is a reset
        self._episode_return = np.zeros(self.num_envs, dtype=np.float64)
        self._episode_length = np.zeros(self.num_envs, dtype=np.int64)
        self._buffers: dict[str, np.ndarray] | None = None

    def _buffers_for(self, num_steps: int) -> dict[str, np.ndarray]:
        b = self._buffers
        if b is None or len(b["action"]) != num_steps:
            n, obs = self.num_envs, self._obs
            b = self._buffers = {
                # obs[t + 1] is what step t returned: the next observation of step t (the final one
                # when the episode ended there) and the observation step t + 1 acts on.
                "obs": np.zeros((num_steps + 1, *obs.shape), obs.dtype),
                "action": np.zeros((num_steps, n), np.int64),
                "reward": np.zeros((num_steps, n), np.float32),
                "terminated": np.zeros((num_steps, n), bool),
                "truncated": np.zeros((num_steps, n), bool),
            }
        return b

    def collect(self, num_steps: int, epsilon: float | np.ndarray) -> Rollout:
        """Step the vector env ``num_steps`` times (``num_steps * num_envs`` sub-env steps)."""
        b = self._buffers_for(num_steps)
        obs_buf, action, reward = b["obs"], b["action"], b["reward"]
        terminated, truncated = b["terminated"], b["truncated"]
        # exploration draws for the whole block at once
        explore = self.rng.random((num_steps, self.num_envs)) < epsilon
        random_actions = self.rng.integers(0, self.num_actions, size=(num_steps, self.num_envs))

        obs_buf[0] = self._obs
        for t in range(num_steps):
            greedy = self.policy.q_values(obs_buf[t]).argmax(axis=1)
            action[t] = np.where(explore[t], random_actions[t], greedy)
            obs_buf[t + 1], reward[t], terminated[t], truncated[t], _ = self.env.step(action[t])
        self._obs = obs_buf[num_steps].copy()
        bad = self._non_finite(obs_buf, reward)   # [T, N] steps with a NaN or infinity, or None

        # The step after an episode's end is the autoreset step: not a transition.
        ended = terminated | truncated
        valid = np.empty_like(ended)
        valid[0] = ~self._autoreset
        np.logical_not(ended[:-1], out=valid[1:])
        self._autoreset = ended[-1].copy()
        block = StepBlock(obs=obs_buf[:-1], action=action, reward=reward, next_obs=obs_buf[1:],
                          terminated=terminated, truncated=truncated, valid=valid)

        if bad is None:
            returns, lengths = self._episode_stats(block)
            transitions = self.nstep.add(block)
        else:   # skip: the bad rewards count for nothing in returns; no transition holds a bad number
            returns, lengths = self._episode_stats(StepBlock(**{**vars(block), "reward": np.where(
                np.isfinite(reward), reward, np.float32(0))}))
            transitions = self.nstep.add(block)
            keep = finite_rows(transitions)
            if not keep.all():
                transitions = Transitions(**{k: v[keep] for k, v in transitions.as_dict().items()})
        return Rollout(transitions, int(valid.sum()), returns, lengths, 0 if bad is None else int(bad.sum()))

    def _non_finite(self, obs_buf: np.ndarray, reward: np.ndarray) -> np.ndarray | None:
        """None if every observation and reward of the block is finite; else the [T, N] steps with
        a NaN or infinity in their reward or next observation (``skip``: counted), or, under
        ``error``, a NonFiniteError naming the env, the field and the sub-env."""
        next_obs = obs_buf[1:]
        float_obs = next_obs.dtype.kind == "f"
        if np.isfinite(reward).all() and (not float_obs or np.isfinite(next_obs).all()):
            return None
        bad_reward = ~np.isfinite(reward)
        bad_obs = (~np.isfinite(next_obs).reshape(*reward.shape, -1).all(axis=2) if float_obs
                   else np.zeros_like(bad_reward))
        if self.non_finite == "error":
            field, where = ("reward", bad_reward) if bad_reward.any() else ("observation", bad_obs)
            t, i = (int(x[0]) for x in np.nonzero(where))
            value = reward[t, i] if field == "reward" else next_obs[t, i][~np.isfinite(next_obs[t, i])][0]
            raise NonFiniteError(f"env {self.env_name}: a non-finite {field} ({value}) from sub-env {i}; "
                                 f"env.non_finite=skip drops such transitions instead")
        bad = bad_reward | bad_obs
        self.non_finite_skipped += int(bad.sum())
        return bad

    def _episode_stats(self, block: StepBlock) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of the episodes that ended in ``block``, without a per-step loop."""
        done = (block.terminated | block.truncated) & block.valid
        if not done.any():  # the common case: nothing ended, only the running sums move
            self._episode_return += np.where(block.valid, block.reward, 0.0).sum(axis=0)
            self._episode_length += block.valid.sum(axis=0)
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        rewards = np.where(block.valid, block.reward, 0.0)
        cum_return = self._episode_return + np.cumsum(rewards, axis=0)          # [T, N]
        cum_length = self._episode_length + np.cumsum(block.valid, axis=0)
        t_index = np.arange(len(block))[:, None]
        last_done = np.maximum.accumulate(np.where(done, t_index, -1), axis=0)  # last end at or before t
        prev_done = np.vstack([np.full((1, self.num_envs), -1), last_done[:-1]])
        env_index = np.arange(self.num_envs)
        base_return = np.where(prev_done >= 0, cum_return[prev_done, env_index], 0.0)
        base_length = np.where(prev_done >= 0, cum_length[prev_done, env_index], 0)
        returns = (cum_return - base_return)[done]
        lengths = (cum_length - base_length)[done]
        final = last_done[-1]
        ended = final >= 0
        self._episode_return = np.where(ended, cum_return[-1] - cum_return[final, env_index], cum_return[-1])
        self._episode_length = np.where(ended, cum_length[-1] - cum_length[final, env_index], cum_length[-1])
        # done is time-major; report episodes in the order they ended
        order = np.argsort(np.nonzero(done)[0], kind="stable")
        return returns[order], lengths[order]

    # ---- checkpointing: the actor's own counters and RNG; the env is saved by whoever owns it ----
    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state, "obs": self._obs.copy(),
            "autoreset": self._autoreset.copy(), "episode_return": self._episode_return.copy(),
            "episode_length": self._episode_length.copy(), "nstep": self.nstep.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], env_restored: bool) -> None:
        """Restore RNG and n-step state; the in-flight episode only if the env itself was restored."""
        self.rng.bit_generator.state = state["rng"]
        if env_restored:
            self._obs = state["obs"].copy()
            self._autoreset = state["autoreset"].copy()
            self._episode_return = state["episode_return"].copy()
            self._episode_length = state["episode_length"].copy()
            self.nstep.load_state_dict(state["nstep"])


def evaluate(policy: Any, env: gym.vector.VectorEnv, num_episodes: int, epsilon: float,
             seed: int) -> np.ndarray:
    """Undiscounted returns of exactly ``num_episodes`` episodes, spread evenly over the sub-envs.

    Sub-env i runs (num_episodes + i) // num_envs episodes, so the sample is not biased towards
    short episodes (which would finish first).
    """
    _check_autoreset(env)
    rng = np.random.default_rng(seed)
    n = env.num_envs
    targets = np.array([(num_episodes + i) // n for i in range(n)])
    counts = np.zeros(n, dtype=np.int64)
    running = np.zeros(n, dtype=np.float64)
    returns: list[np.ndarray] = []
    obs, _ = env.reset(seed=seed)
    autoreset = np.zeros(n, dtype=bool)
    while (counts < targets).any():
        actions = epsilon_greedy(policy.q_values(obs), epsilon, rng)
        obs, reward, terminated, truncated, _ = env.step(actions)
        counting = ~autoreset & (counts < targets)
        running += np.where(counting, reward, 0.0)
        autoreset = terminated | truncated
        finished = autoreset & counting
        if finished.any():
            returns.append(running[finished].copy())
            counts += finished
            running[finished] = 0.0
    return np.concatenate(returns) if returns else np.zeros(0)
