"""Vector environments from the config: any Gymnasium id with discrete actions.

CartPole-v1 has a natively vectorized implementation in Gymnasium (all sub-envs stepped by one set
of NumPy operations); ``auto`` uses it. Other ids are stepped in turn (``sync``) or in subprocesses
(``async``). Atari ids (``ALE/...``, with ``pip install distdqn[atari]``) get the standard
preprocessing: 84x84 grayscale, frame skip 4, 4 stacked frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from distdqn.errors import EnvironmentSpecError

if TYPE_CHECKING:
    from distdqn.config import EnvConfig


@dataclass(frozen=True)
class EnvInfo:
    """What the rest of the system needs to know about an environment."""

    id: str
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    reward_threshold: float | None


def _spec(env_id: str) -> gym.envs.registration.EnvSpec:
    if env_id.startswith("ALE/"):
        try:
            import ale_py
            gym.register_envs(ale_py)
        except ImportError:
            raise EnvironmentSpecError(
                f"env.id: {env_id} needs the Atari extra (pip install 'distdqn[atari]')") from None
    try:
        return gym.spec(env_id)
    except gym.error.Error as exc:
        raise EnvironmentSpecError(f"env.id: unknown environment {env_id!r} ({exc})") from None


def _is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def _single_env(cfg: EnvConfig) -> gym.Env:
    kwargs = dict(cfg.kwargs)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    if _is_atari(cfg.id):
        env = gym.make(cfg.id, frameskip=1, **kwargs)
        env = gym.wrappers.AtariPreprocessing(env, frame_skip=4, screen_size=84, grayscale_obs=True)
        return gym.wrappers.FrameStackObservation(env, 4)
    return _set_attributes(gym.make(cfg.id, **kwargs), cfg.attributes, cfg.id)


def _set_attributes(env, attributes: dict[str, float], env_id: str):
    """Set physical parameters on ``env.unwrapped`` (CartPole's derived masses are recomputed)."""
    if not attributes:
        return env
    base = env.unwrapped
    for name, value in attributes.items():
        current = getattr(base, name, None)
        if not isinstance(current, int | float) or isinstance(current, bool):
            raise EnvironmentSpecError(f"env.attributes.{name}: {env_id} has no numeric attribute {name!r}")
        setattr(base, name, type(current)(value))
    if hasattr(base, "polemass_length"):   # CartPole keeps these two derived from the others
        base.total_mass = base.masspole + base.masscart
        base.polemass_length = base.masspole * base.length
    return env


def _mode(cfg: EnvConfig) -> str:
    spec = _spec(cfg.id)
    if cfg.vectorization != "auto":
        return cfg.vectorization
    return "native" if spec.vector_entry_point is not None and not cfg.kwargs else "sync"


def make_vector_env(cfg: EnvConfig, num_envs: int) -> gym.vector.VectorEnv:
    """A vector env of ``num_envs`` copies of ``cfg.id`` (seeded by the caller's first reset)."""
    mode = _mode(cfg)
    try:
        if mode == "native":
            kwargs = dict(cfg.kwargs)
            if cfg.max_episode_steps is not None:
                kwargs["max_episode_steps"] = cfg.max_episode_steps
            env = _set_attributes(gym.make_vec(cfg.id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                                               **kwargs), cfg.attributes, cfg.id)
        elif mode == "sync":
            env = gym.vector.SyncVectorEnv([lambda: _single_env(cfg)] * num_envs)
        else:
            env = gym.vector.AsyncVectorEnv([lambda: _single_env(cfg)] * num_envs, shared_memory=True)
    except gym.error.Error as exc:
        raise EnvironmentSpecError(f"env: cannot make {cfg.id!r}: {exc}") from None
    except TypeError as exc:  # unknown keyword in env.kwargs
        raise EnvironmentSpecError(f"env.kwargs: {cfg.id} rejects them: {exc}") from None
    return StepLatency(env, cfg.step_latency_ms / 1000) if cfg.step_latency_ms > 0 else env


class StepLatency(gym.vector.VectorWrapper):
    """Every step answers ``latency_s`` later, the CPU left free meanwhile (``env.step_latency_ms``):
    a stand-in for simulators that run elsewhere, to measure how far acting scales past the cores."""

    def __init__(self, env: gym.vector.VectorEnv, latency_s: float):
        super().__init__(env)
        self.latency_s = latency_s

    def step(self, actions):
        time.sleep(self.latency_s)
        return self.env.step(actions)


def env_info(cfg: EnvConfig) -> EnvInfo:
    """Check that DQN can learn ``cfg.id`` (discrete actions, array observations) and describe it."""
    spec = _spec(cfg.id)
    try:
        env = _single_env(cfg)
    except gym.error.DependencyNotInstalled as exc:
        raise EnvironmentSpecError(f"env.id: {cfg.id} needs a package that is not installed: {exc}") from None
    except (gym.error.Error, TypeError) as exc:
        raise EnvironmentSpecError(f"env: cannot make {cfg.id!r}: {exc}") from None
    try:
        action_space, obs_space = env.action_space, env.observation_space
    finally:
        env.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        raise EnvironmentSpecError(
            f"env.id: {cfg.id} has a {type(action_space).__name__} action space; DQN needs Discrete actions")
    if not isinstance(obs_space, gym.spaces.Box):
        raise EnvironmentSpecError(
            f"env.id: {cfg.id} has a {type(obs_space).__name__} observation space; distdqn needs a Box")
    return EnvInfo(cfg.id, tuple(obs_space.shape), np.dtype(obs_space.dtype), int(action_space.n),
                   spec.reward_threshold)
