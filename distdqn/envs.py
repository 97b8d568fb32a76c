"""Vector environments from the config: any Gymnasium id with discrete actions.

CartPole-v1 has a natively vectorized implementation in Gymnasium (all sub-envs stepped by one set
of NumPy operations); ``auto`` uses it. Other ids are stepped in turn (``sync``) or in subprocesses
(``async``).

Atari ids (``ALE/<Game>-v5``, ``pip install 'distdqn[atari]'``) have one preprocessing, ale-py's
C++ ``AtariVectorEnv`` (threads of its own), set by ``env.atari`` (noop reset, frame skip with a
max over the last two frames, grayscale resize, frame stack, sticky actions, the frame cap). Life
loss as a terminal and reward clipping apply to training envs only: an evaluation env
(``evaluation=True``) plays whole games and returns the game's score. The C++ path gives the same
observations as Gymnasium's ``AtariPreprocessing`` + ``FrameStackObservation`` for the same seed
and actions (``tests/test_pixels_envs.py``), several times faster.

MinAtar ids (``MinAtar/<Game>-v1``, ``pip install 'distdqn[minatar]'``) are registered on first
use; their observations are [10, 10, C] boolean boards, channels last.
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
    if _is_atari(env_id):
        try:
            import ale_py
            gym.register_envs(ale_py)
        except ImportError:
            raise EnvironmentSpecError(
                f"env.id: {env_id} needs the Atari extra (pip install 'distdqn[atari]')") from None
    elif env_id.startswith("MinAtar/") and env_id not in gym.registry:
        try:
            import minatar.gym
        except ImportError:
            raise EnvironmentSpecError(
                f"env.id: {env_id} needs the MinAtar extra (pip install 'distdqn[minatar]')") from None
        minatar.gym.register_envs()
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
    return _set_attributes(gym.make(cfg.id, **kwargs), cfg.attributes, cfg.id)


def atari_vector_env(cfg: EnvConfig, num_envs: int, evaluation: bool = False) -> gym.vector.VectorEnv:
    """ale-py's C++ vector env for an ``ALE/<Game>-v5`` id, preprocessed as ``cfg.atari`` says."""
    from ale_py.vector_env import AtariVectorEnv

    if cfg.vectorization in ("sync", "async"):
        raise EnvironmentSpecError(f"env.vectorization: {cfg.id} is stepped by ale-py's AtariVectorEnv "
                                   f"(auto or native), not {cfg.vectorization}")
    if cfg.max_episode_steps is not None:
        raise EnvironmentSpecError(f"env.max_episode_steps: {cfg.id} is capped by "
                                   "env.atari.max_episode_frames instead")
    if cfg.attributes:
        raise EnvironmentSpecError(f"env.attributes: {cfg.id} takes none")
    a = cfg.atari
    options = {
        "noop_max": a.noop_max, "frameskip": a.frame_skip, "maxpool": True, "grayscale": True,
        "img_height": a.screen_size, "img_width": a.screen_size, "stack_num": a.frame_stack,
        "repeat_action_probability": a.repeat_action_probability, "use_fire_reset": a.fire_reset,
        "max_num_frames_per_episode": a.max_episode_frames,
        # life_loss_info: terminated on a lost life while the game goes on (Nature DQN);
        # episodic_life would reset the whole game at each lost life
        "episodic_life": False, "life_loss_info": a.terminal_on_life_loss and not evaluation,
        "reward_clipping": a.clip_rewards and not evaluation,
    }
    clash = sorted(set(cfg.kwargs) & set(options))
    if clash:
        raise EnvironmentSpecError(f"env.kwargs: {', '.join(clash)} are set by env.atari")
    game = _spec(cfg.id).kwargs["game"]
    try:
        return AtariVectorEnv(game, num_envs, **options, **cfg.kwargs)
    except TypeError as exc:  # unknown keyword in env.kwargs
        raise EnvironmentSpecError(f"env.kwargs: {cfg.id} rejects them: {exc}") from None


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


def make_vector_env(cfg: EnvConfig, num_envs: int, evaluation: bool = False) -> gym.vector.VectorEnv:
    """A vector env of ``num_envs`` copies of ``cfg.id`` (seeded by the caller's first reset).
    ``evaluation``: scored as the game is (Atari: whole games, unclipped rewards)."""
    env = atari_vector_env(cfg, num_envs, evaluation) if _is_atari(cfg.id) else _gymnasium_vector_env(cfg, num_envs)
    return StepLatency(env, cfg.step_latency_ms / 1000) if cfg.step_latency_ms > 0 else env


def _gymnasium_vector_env(cfg: EnvConfig, num_envs: int) -> gym.vector.VectorEnv:
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
    return env


class StepLatency(gym.vector.VectorWrapper):
    """Every step answers ``latency_s`` later, the CPU left free meanwhile (``env.step_latency_ms``):
    a stand-in for simulators that run elsewhere, to measure how far acting scales past the cores."""

    def __init__(self, env: gym.vector.VectorEnv, latency_s: float):
        super().__init__(env)
        self.latency_s = latency_s

    def step(self, actions):
        time.sleep(self.latency_s)
        return self.env.step(actions)


# ---- an env's state as data (checkpoints never unpickle an environment) ----

# Envs and wrappers whose whole dynamic state is in plain attributes (arrays, numbers, NumPy
# generators): ``env_state`` saves those of a vector env made only of these, so that a resumed
# run continues the same episodes. Anything else (Box2D worlds, emulators, subprocesses) resumes
# with fresh episodes.
DATA_STATE_ENVS = frozenset({
    "gymnasium.envs.classic_control.cartpole.CartPoleVectorEnv",
    "gymnasium.envs.classic_control.cartpole.CartPoleEnv",
    "gymnasium.envs.classic_control.acrobot.AcrobotEnv",
    "gymnasium.envs.classic_control.mountain_car.MountainCarEnv",
    "gymnasium.vector.sync_vector_env.SyncVectorEnv",
    "gymnasium.wrappers.common.TimeLimit",
    "gymnasium.wrappers.common.OrderEnforcing",
    "gymnasium.wrappers.common.PassiveEnvChecker",
    "distdqn.envs.StepLatency",
})


def _is_data(value) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biufc"
    if isinstance(value, bool | int | float | str | type(None) | np.generic):
        return not isinstance(value, np.generic) or value.dtype.kind in "biufc"
    if isinstance(value, list | tuple):
        return all(_is_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_data(v) for k, v in value.items())
    return False


def _env_nodes(env) -> list | None:
    """The vector env, its wrappers and sub-envs in a fixed order; None if one of them is not
    known to keep its state in data (``DATA_STATE_ENVS``)."""
    nodes, todo = [], [env]
    while todo:
        node = todo.pop(0)
        if f"{type(node).__module__}.{type(node).__qualname__}" not in DATA_STATE_ENVS:
            return None
        nodes.append(node)
        todo += list(getattr(node, "envs", [])) + ([node.env] if isinstance(getattr(node, "env", None),
                                                                        gym.Env | gym.vector.VectorEnv) else [])
    return nodes


def env_state(env) -> dict | None:
    """The env's state as data (arrays, numbers, generator states), or None where the env is not
    one of ``DATA_STATE_ENVS`` (a resumed run then starts fresh episodes)."""
    nodes = _env_nodes(env)
    if nodes is None:
        return None
    state = []
    for node in nodes:
        attrs, generators = {}, {}
        for name, value in vars(node).items():
            if isinstance(value, np.random.Generator):
                generators[name] = value.bit_generator.state
            elif name not in ("env", "envs") and _is_data(value):
                attrs[name] = value.copy() if isinstance(value, np.ndarray) else value
        state.append({"class": f"{type(node).__module__}.{type(node).__qualname__}",
                      "attributes": attrs, "generators": generators})
    return {"nodes": state}


def load_env_state(env, state: dict) -> bool:
    """Put ``env_state``'s data back into a freshly made (and reset) env of the same config;
    False (the env left as it is) if the env is not made of the same parts."""
    nodes = _env_nodes(env)
    saved = state.get("nodes", [])
    if nodes is None or [f"{type(n).__module__}.{type(n).__qualname__}" for n in nodes] != [s["class"] for s in saved]:
        return False
    for node, part in zip(nodes, saved, strict=True):
        for name, value in part["attributes"].items():
            setattr(node, name, np.array(value) if isinstance(value, np.ndarray) else value)
        for name, generator_state in part["generators"].items():
            generator = getattr(node, name, None)
            if not isinstance(generator, np.random.Generator):
                generator = np.random.default_rng()
                setattr(node, name, generator)
            generator.bit_generator.state = generator_state
    return True


def env_info(cfg: EnvConfig) -> EnvInfo:
    """Check that DQN can learn ``cfg.id`` (discrete actions, array observations) and describe it."""
    spec = _spec(cfg.id)
    if _is_atari(cfg.id):
        env = atari_vector_env(cfg, 1)
        action_space, obs_space = env.single_action_space, env.single_observation_space
        env.close()
        return EnvInfo(cfg.id, tuple(obs_space.shape), np.dtype(obs_space.dtype), int(action_space.n),
                       spec.reward_threshold)
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
