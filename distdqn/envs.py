"""Vector environments from the config: any Gymnasium env with discrete actions, the user's too.

CartPole-v1 has a natively vectorized implementation in Gymnasium (all sub-envs stepped by one set
of NumPy operations); ``auto`` uses it. Other ids are stepped in turn (``sync``) or in subprocesses
(``async``).

The user's environments: ``env.id`` in the ``module:Id`` form imports ``module`` (which registers
``Id``) in every process that makes the env; ``env.make`` names a factory (``package.module:function``,
or from the Python API the callable itself) called with ``env.kwargs``; ``env.wrappers`` wrap each
env, in order, right after it is made. ``user_modules`` names the modules a run needs, so that a
cluster run can ship them (runtime/cluster.py). Every failure of the user's code while an env is
made is an ``EnvironmentSpecError`` naming the field.

Observations reach the replay as arrays (``observation_layout``): a Box as it is (a channels-last
uint8 image [H, W, C] turned channels-first, [C, H, W], as the CNNs take it; a 2-D one given a
channel axis); Discrete, MultiDiscrete, MultiBinary, Dict and Tuple flattened into one row of
numbers and indices, with an ``InputEncoding`` that tells the network to one-hot encode the
indices (core/networks.py). Spaces that are not arrays (Text, Graph, Sequence, OneOf) are refused
in one line that says what to do instead, as are action spaces other than Discrete.

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

import importlib
import importlib.util
import site
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from distdqn.core.networks import InputEncoding, Segment
from distdqn.errors import EnvironmentSpecError

if TYPE_CHECKING:
    from distdqn.config import EnvConfig


@dataclass(frozen=True)
class EnvInfo:
    """What the rest of the system needs to know about an environment: its observations as the
    replay stores them (shape, dtype) and how the network encodes them (None: as numbers)."""

    id: str
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    reward_threshold: float | None
    encoding: InputEncoding | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


# ---- the user's code: module:Id, env.make, env.wrappers ----

def _import_module(module: str, field: str):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises, one line
        raise EnvironmentSpecError(f"{field}: cannot import module {module!r} ({_first_line(exc)})") from None


def import_reference(reference: Any, field: str) -> Callable[..., Any]:
    """The callable ``reference`` names (``package.module:name``), or ``reference`` itself if it is
    one (from the Python API). Anything that does not import or is not callable: one line naming
    ``field``."""
    if callable(reference):
        return reference
    if reference.startswith("<python "):
        raise EnvironmentSpecError(
            f"{field}: {reference} was a Python object handed to distdqn.train, not a name config.yaml "
            "can hold: hand it again (distdqn.load(RUN, env=...)), or name it as package.module:function")
    module, sep, name = reference.partition(":")
    if not sep or not module or not name:
        raise EnvironmentSpecError(f"{field}: {reference!r} should be package.module:name")
    obj = _import_module(module, field)
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise EnvironmentSpecError(f"{field}: module {module!r} has no {name!r}") from None
    if not callable(obj):
        raise EnvironmentSpecError(f"{field}: {reference} is a {type(obj).__name__}, not a callable")
    return obj


def _reference_name(reference: Any) -> str:
    if isinstance(reference, str):
        return reference
    return getattr(reference, "__qualname__", None) or type(reference).__qualname__


def _checked_env(env: Any, field: str, what: str) -> gym.Env:
    if not isinstance(env, gym.Env):
        raise EnvironmentSpecError(f"{field}: {what} returned a {type(env).__name__}, not a gymnasium.Env")
    return env


def user_modules(cfg: EnvConfig) -> list[str]:
    """The modules of the user's code that making this env imports: ``env.id``'s ``module:``,
    ``env.make``'s and each wrapper's (for a callable from the Python API, its defining module,
    unless it is ``__main__``, which travels by value)."""
    refs = [cfg.make, *(w.wrapper for w in cfg.wrappers)]
    names = [cfg.id.partition(":")[0]] if ":" in cfg.id and cfg.make is None else []
    for ref in refs:
        if isinstance(ref, str) and ":" in ref:
            names.append(ref.partition(":")[0])
        elif ref is not None and not isinstance(ref, str):
            names.append(getattr(ref, "__module__", None) or "__main__")
    return sorted({n for n in names if n and n != "__main__"})


def _installed_roots() -> list[Path]:
    """Where the Python installation keeps its own and installed packages (and distdqn itself):
    code there is expected on every node already, as distdqn is."""
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
    roots.add(str(Path(__file__).resolve().parent))
    return [Path(r).resolve() for r in roots if r]


def user_module_paths(cfg: EnvConfig) -> list[str]:
    """The files of the user's modules (``user_modules``) that a run on a cluster ships to every
    node (Ray's ``py_modules``): the top-level package's folder, or a single-file module; not
    what is installed (site-packages: install it on every node, as distdqn), nor ``__main__``."""
    roots, paths = _installed_roots(), []
    for top in sorted({name.split(".")[0] for name in user_modules(cfg)}):
        spec = importlib.util.find_spec(top)
        if spec is None:
            continue
        if spec.submodule_search_locations:
            found = [Path(p).resolve() for p in spec.submodule_search_locations]
        elif spec.origin and spec.origin.endswith(".py"):
            found = [Path(spec.origin).resolve()]
        else:
            continue   # built in, or compiled: to be installed on every node
        paths += [str(p) for p in found if not any(p.is_relative_to(r) for r in roots)]
    return paths


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
    elif ":" in env_id:
        module, _, name = env_id.partition(":")
        _import_module(module, "env.id")
        if name not in gym.registry:
            raise EnvironmentSpecError(f"env.id: module {module!r} imports, but registers no {name!r} "
                                       "(gymnasium.register it there)")
        return gym.spec(name)
    try:
        return gym.spec(env_id)
    except gym.error.Error as exc:
        raise EnvironmentSpecError(f"env.id: unknown environment {env_id!r} ({exc})") from None


def _is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def _uses_atari(cfg: EnvConfig) -> bool:
    return cfg.make is None and _is_atari(cfg.id)


def _made_env(cfg: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """The env as ``env.make`` or ``gymnasium.make`` gives it (with ``env.max_episode_steps``)."""
    extra = {"render_mode": render_mode} if render_mode is not None else {}
    if cfg.make is None:
        kwargs = {**cfg.kwargs, **extra}
        if cfg.max_episode_steps is not None:
            kwargs["max_episode_steps"] = cfg.max_episode_steps
        return gym.make(cfg.id, **kwargs)
    factory, name = import_reference(cfg.make, "env.make"), _reference_name(cfg.make)
    try:
        env = factory(**cfg.kwargs, **extra)
    except TypeError as exc:
        if not extra or "render_mode" not in str(exc):
            raise EnvironmentSpecError(f"env.make: {name} failed ({_first_line(exc)})") from None
        raise EnvironmentSpecError(f"env.make: {name} takes no render_mode; to record video it must accept "
                                   f"render_mode='{render_mode}' and render frames") from None
    except Exception as exc:  # noqa: BLE001 - the user's factory: one line
        raise EnvironmentSpecError(f"env.make: {name} failed ({_first_line(exc)})") from None
    env = _checked_env(env, "env.make", name)
    if cfg.max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, cfg.max_episode_steps)
    return env


def _wrapped(env: gym.Env, cfg: EnvConfig) -> gym.Env:
    """``env`` inside the user's wrappers, in order."""
    for i, w in enumerate(cfg.wrappers):
        field = f"env.wrappers[{i}]"
        wrap = import_reference(w.wrapper, f"{field}.wrapper")
        try:
            env = wrap(env, **w.kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's wrapper: one line
            raise EnvironmentSpecError(f"{field}: {_reference_name(w.wrapper)} failed ({_first_line(exc)})") from None
        env = _checked_env(env, field, _reference_name(w.wrapper))
    return env


def _python_atari_env(cfg: EnvConfig, render_mode: str | None) -> gym.Env:
    """One ``ALE/`` game through Gymnasium's Python wrappers, set as ``env.atari`` sets the C++
    vector env (whole games, unclipped: as evaluated). The same observations for the same seed and
    actions (tests/test_pixels_envs.py); for a loop of one's own and for video, not for training."""
    _spec(cfg.id)
    a = cfg.atari
    env = gym.make(cfg.id, frameskip=1, repeat_action_probability=a.repeat_action_probability,
                   max_num_frames_per_episode=a.max_episode_frames, render_mode=render_mode, **cfg.kwargs)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=a.noop_max, frame_skip=a.frame_skip,
                                          screen_size=a.screen_size, grayscale_obs=True)
    return gym.wrappers.FrameStackObservation(env, a.frame_stack, padding_type="zero")


def make_env(cfg: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """One env as the user sees it: made (``env.id`` or ``env.make``, ``render_mode`` passed on),
    inside the user's wrappers, its attributes set; its observations are the env's own, not yet
    stored arrays (``distdqn.load(...).act`` takes these). ``ALE/`` ids: ``_python_atari_env``."""
    if _uses_atari(cfg):
        return _python_atari_env(cfg, render_mode)
    if cfg.make is None:
        _spec(cfg.id)
    return _set_attributes(_wrapped(_made_env(cfg, render_mode), cfg), cfg.attributes, cfg.id)


def _single_env(cfg: EnvConfig) -> gym.Env:
    """One env as distdqn steps it: ``make_env``, then distdqn's own wrappers (observations as
    arrays, actions counted from 0)."""
    return with_distdqn_wrappers(make_env(cfg), cfg.id, _env_field(cfg))


def _env_field(cfg: EnvConfig) -> str:
    """The field that names the env, for errors about it."""
    return "env.make" if cfg.make is not None else "env.id"


def with_distdqn_wrappers(env: gym.Env, env_id: str, field: str = "env") -> gym.Env:
    """``env`` with distdqn's own wrappers, the outermost: observations as ``observation_layout``
    stores them, a Discrete action space counted from 0."""
    layout = observation_layout(env.observation_space, env_id, field)
    if layout.transform != "none":
        env = ObservationArray(env, layout)
    if isinstance(env.action_space, gym.spaces.Discrete) and int(env.action_space.start) != 0:
        env = ActionsFromZero(env)
    return env


# ---- observations as arrays ----

@dataclass(frozen=True)
class ObservationLayout:
    """How an env's observations are stored: ``space`` (a Box: what the replay holds), the
    ``transform`` from the env's observation to it (``none``: as they are; ``channels_first``: an
    [H, W, C] image to [C, H, W]; ``channel_axis``: an [H, W] frame to [1, H, W]; ``flatten``: the
    values at ``paths`` (keys and indices into Dicts and Tuples) concatenated into one row) and
    the network's input ``encoding`` (None: the values as numbers)."""

    space: gym.spaces.Box
    transform: str = "none"
    paths: tuple[tuple, ...] = ()
    encoding: InputEncoding | None = None

    def apply(self, obs: Any) -> np.ndarray:
        if self.transform == "channels_first":
            return np.ascontiguousarray(np.transpose(obs, (2, 0, 1)))
        if self.transform == "channel_axis":
            return np.asarray(obs)[None]
        if self.transform == "flatten":
            values = []
            for path in self.paths:
                value = obs
                for key in path:
                    value = value[key]
                values.append(np.asarray(value).reshape(-1))
            return np.concatenate(values).astype(self.space.dtype, copy=False)
        return obs


_NOT_ARRAYS = {
    "Text": "encode the text as numbers (token ids in a Box, or an embedding) with an observation wrapper in env.wrappers",
    "Graph": "encode the graph as a fixed-size Box (an adjacency matrix, node features) with an observation wrapper in env.wrappers",
    "Sequence": "pad the sequence to a fixed-size Box with an observation wrapper in env.wrappers",
    "OneOf": "encode the choice and its value as a fixed-size Box with an observation wrapper in env.wrappers",
}


def _image_transform(space: gym.spaces.Box) -> str:
    """For uint8 images that are not channels-first: channels-last [H, W, C] (C in 1, 3, 4) is
    transposed to [C, H, W]; a 2-D [H, W] frame gets a channel axis; both with sides >= 36."""
    shape = space.shape
    if space.dtype != np.uint8:
        return "none"
    if len(shape) == 3 and shape[2] in (1, 3, 4) and min(shape[:2]) >= 36 and shape[0] not in (1, 3, 4):
        return "channels_first"
    if len(shape) == 2 and min(shape) >= 36:
        return "channel_axis"
    return "none"


def _leaves(space: gym.Space, path: str, env_id: str, field: str) -> list[tuple[tuple, gym.Space]]:
    """The array spaces inside ``space`` in Gymnasium's order (Dict keys sorted), with the keys
    and indices that reach each."""
    if isinstance(space, gym.spaces.Dict):
        return [((key, *p), s) for key, sub in space.spaces.items()
                for p, s in _leaves(sub, f"{path}[{key!r}]", env_id, field)]
    if isinstance(space, gym.spaces.Tuple):
        return [((i, *p), s) for i, sub in enumerate(space.spaces)
                for p, s in _leaves(sub, f"{path}[{i}]", env_id, field)]
    if isinstance(space, gym.spaces.Box | gym.spaces.Discrete | gym.spaces.MultiDiscrete | gym.spaces.MultiBinary):
        return [((), space)]
    name = type(space).__name__
    advice = _NOT_ARRAYS.get(name, "turn them into a Box with an observation wrapper in env.wrappers")
    where = "" if path == "observation" else f" at {path}"
    raise EnvironmentSpecError(f"{field}: {env_id} has {name} observations{where}; distdqn needs arrays: {advice}")


def _segments(space: gym.Space) -> list[Segment]:
    if isinstance(space, gym.spaces.Discrete):
        return [Segment(1, int(space.n), int(space.start))]
    if isinstance(space, gym.spaces.MultiDiscrete):
        return [Segment(1, int(n), int(start)) for n, start in zip(space.nvec.ravel(), space.start.ravel(), strict=True)]
    return [Segment(int(np.prod(space.shape)))]   # Box, MultiBinary: numbers


def _bounds(space: gym.Space) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(space, gym.spaces.Discrete):
        return np.array([space.start], np.float64), np.array([space.start + space.n - 1], np.float64)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return space.start.ravel().astype(np.float64), (space.start + space.nvec - 1).ravel().astype(np.float64)
    if isinstance(space, gym.spaces.MultiBinary):
        return np.zeros(int(np.prod(space.shape))), np.ones(int(np.prod(space.shape)))
    return space.low.ravel().astype(np.float64), space.high.ravel().astype(np.float64)


def _merged(segments: list[Segment]) -> tuple[Segment, ...]:
    out: list[Segment] = []
    for s in segments:
        if out and (out[-1].one_hot, out[-1].start) == (s.one_hot, s.start):
            out[-1] = Segment(out[-1].size + s.size, s.one_hot, s.start)
        else:
            out.append(s)
    return tuple(out)


def observation_layout(space: gym.Space, env_id: str = "the env", field: str = "env") -> ObservationLayout:
    """How observations of ``space`` are stored and encoded (see the module docstring)."""
    if isinstance(space, gym.spaces.Box):
        transform = _image_transform(space)
        if transform == "none":
            return ObservationLayout(space)
        shape = ObservationLayout(space, transform).apply(np.zeros(space.shape, np.uint8)).shape
        return ObservationLayout(gym.spaces.Box(0, 255, shape, np.uint8), transform)
    leaves = _leaves(space, "observation", env_id, field)
    segments = [s for _, leaf in leaves for s in _segments(leaf)]
    floats = any(isinstance(leaf, gym.spaces.Box) and np.issubdtype(leaf.dtype, np.floating) for _, leaf in leaves)
    dtype = np.dtype(np.float32) if floats else np.dtype(np.int64)
    low, high = (np.concatenate(b) for b in zip(*(_bounds(leaf) for _, leaf in leaves), strict=True))
    if not floats:   # integer bounds (an unbounded int Box's are its dtype's limits)
        info = np.iinfo(dtype)
        low, high = np.clip(low, info.min, info.max), np.clip(high, info.min, info.max)
    stored = gym.spaces.Box(low.astype(dtype), high.astype(dtype), (len(low),), dtype)
    encoding = InputEncoding(_merged(segments)) if any(s.one_hot for s in segments) else None
    return ObservationLayout(stored, "flatten", tuple(path for path, _ in leaves), encoding)


def _at(obs: Any, path: tuple) -> Any:
    for key in path:
        obs = obs[key]
    return obs


def _space_at(space: gym.Space, path: tuple) -> gym.Space:
    for key in path:
        space = space[key]
    return space


def stored_batch(layout: ObservationLayout, space: gym.Space, obs: Any) -> tuple[np.ndarray, bool]:
    """Observations of ``space`` as the replay stores them, [B, *stored shape], from one
    observation (then True) or a batch of them (each leaf an array with a leading batch axis)."""
    if layout.transform == "flatten":
        first = np.asarray(_at(obs, layout.paths[0]))
        single = first.shape == _space_at(space, layout.paths[0]).shape
        leaves = [np.asarray(_at(obs, path)) for path in layout.paths]
        batch = 1 if single else len(first)
        rows = np.concatenate([leaf.reshape(batch, -1) for leaf in leaves], axis=1)
        return rows.astype(layout.space.dtype, copy=False), single
    array = np.asarray(obs)
    single = array.shape == space.shape
    batch = array[None] if single else array
    if batch.shape[1:] != space.shape:
        raise EnvironmentSpecError(f"observation of shape {array.shape}: the agent takes {space.shape} "
                                   f"or a batch [B, *{space.shape}]")
    if layout.transform == "channels_first":
        batch = np.ascontiguousarray(np.transpose(batch, (0, 3, 1, 2)))
    elif layout.transform == "channel_axis":
        batch = batch[:, None]
    return batch, single


class ObservationArray(gym.ObservationWrapper):
    """distdqn's own, after the user's wrappers: observations as ``observation_layout`` stores them."""

    def __init__(self, env: gym.Env, layout: ObservationLayout):
        super().__init__(env)
        self.observation_space = layout.space
        self.layout = layout

    def observation(self, observation: Any) -> np.ndarray:
        return self.layout.apply(observation)


class ActionsFromZero(gym.ActionWrapper):
    """A Discrete action space that starts at ``start`` != 0, seen as actions 0..n-1 (the index of
    the network's output)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.start = int(env.action_space.start)
        self.action_space = gym.spaces.Discrete(int(env.action_space.n))

    def action(self, action: Any) -> Any:
        return action + self.start


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
    user_code = cfg.make is not None or bool(cfg.wrappers)   # (never native: config.py EnvConfig.check)
    if cfg.vectorization != "auto":
        return cfg.vectorization
    if user_code or cfg.kwargs:
        return "sync"
    return "native" if _spec(cfg.id).vector_entry_point is not None else "sync"


def make_vector_env(cfg: EnvConfig, num_envs: int, evaluation: bool = False) -> gym.vector.VectorEnv:
    """A vector env of ``num_envs`` copies of the env (seeded by the caller's first reset).
    ``evaluation``: scored as the game is (Atari: whole games, unclipped rewards)."""
    env = atari_vector_env(cfg, num_envs, evaluation) if _uses_atari(cfg) else _gymnasium_vector_env(cfg, num_envs)
    return StepLatency(env, cfg.step_latency_ms / 1000) if cfg.step_latency_ms > 0 else env


def _native_fits(env: gym.vector.VectorEnv) -> bool:
    """An id's own vector env gives what the replay stores (no observation layout, actions from 0)."""
    action = env.single_action_space
    return (observation_layout(env.single_observation_space).transform == "none"
            and isinstance(action, gym.spaces.Discrete) and int(action.start) == 0)


def _gymnasium_vector_env(cfg: EnvConfig, num_envs: int) -> gym.vector.VectorEnv:
    mode = _mode(cfg)
    try:
        if mode == "native":
            kwargs = dict(cfg.kwargs)
            if cfg.max_episode_steps is not None:
                kwargs["max_episode_steps"] = cfg.max_episode_steps
            env = _set_attributes(gym.make_vec(cfg.id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                                               **kwargs), cfg.attributes, cfg.id)
            if _native_fits(env):
                return env
            env.close()
            if cfg.vectorization == "native":
                raise EnvironmentSpecError(f"env.vectorization: {cfg.id}'s own vector env gives observations or "
                                           "actions that need distdqn's wrappers (use auto, sync or async)")
            mode = "sync"
        if mode == "sync":
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


def _action_refusal(field: str, env_id: str, space: gym.Space) -> str:
    name = type(space).__name__
    if isinstance(space, gym.spaces.Box):
        return (f"{field}: {env_id} has continuous actions ({space}); DQN needs Discrete actions: discretize "
                "them with a wrapper in env.wrappers (gymnasium.wrappers:DiscretizeAction, kwargs {bins: 11}), "
                "or use an actor-critic method for continuous control (SAC, TD3)")
    if isinstance(space, gym.spaces.MultiDiscrete | gym.spaces.MultiBinary):
        return (f"{field}: {env_id} has {name} actions ({space}); DQN needs one Discrete action: flatten them into "
                "one with an action wrapper in env.wrappers")
    return f"{field}: {env_id} has {name} actions; DQN needs Discrete actions (an action wrapper in env.wrappers)"


def _layout_of(env: gym.Env) -> ObservationLayout | None:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, ObservationArray):
            return env.layout
        env = env.env
    return None


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
    """Check that DQN can learn the env (discrete actions, array observations) and describe it.
    The user's code (``module:Id``, ``env.make``, ``env.wrappers``) runs here once, in this
    process: what fails fails here, in one line, before a run starts anything."""
    if _uses_atari(cfg):
        spec = _spec(cfg.id)
        env = atari_vector_env(cfg, 1)
        action_space, obs_space = env.single_action_space, env.single_observation_space
        env.close()
        return EnvInfo(cfg.id, tuple(obs_space.shape), np.dtype(obs_space.dtype), int(action_space.n),
                       spec.reward_threshold)
    if cfg.make is None:
        _spec(cfg.id)
    try:
        env = _single_env(cfg)
    except gym.error.DependencyNotInstalled as exc:
        raise EnvironmentSpecError(f"env.id: {cfg.id} needs a package that is not installed: {exc}") from None
    except (gym.error.Error, TypeError) as exc:
        raise EnvironmentSpecError(f"env: cannot make {cfg.id!r}: {exc}") from None
    try:
        action_space, obs_space = env.action_space, env.observation_space
        layout, spec = _layout_of(env), env.spec
    finally:
        env.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        raise EnvironmentSpecError(_action_refusal(_env_field(cfg), cfg.id, action_space))
    return EnvInfo(cfg.id, tuple(obs_space.shape), np.dtype(obs_space.dtype), int(action_space.n),
                   spec.reward_threshold if spec is not None else None,
                   layout.encoding if layout is not None else None)
