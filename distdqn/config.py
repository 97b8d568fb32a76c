"""One typed, validated configuration for every topology.

The defaults are the tuned CartPole-v1 preset, so `distdqn train` with no config trains CartPole-v1.
The presets ship inside the package, as `distdqn/presets/NAME.yaml`, and override a few fields; a
preset is named by its file's stem (`distdqn train lunarlander`), and its first line is a comment
that describes it in one line (`distdqn presets` lists them). Every field is documented where it is
declared. Unknown keys, wrong types and out-of-range values are errors that name the field's dotted
path, for example ``replay.alpha: Input should be less than or equal to 1 (got 1.5)``.

Every float must be finite (NaN and infinity are refused, ``learner.lr: Input should be a finite
number``), and counts and sizes have upper bounds past which a run cannot be meant.

Units are in the names: ``*_env_steps`` counts environment steps (one sub-environment stepping once),
``*_updates`` counts learner updates (one gradient step on one batch).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from distdqn.errors import ConfigError

TOPOLOGIES = ("single", "apex", "sync_ps", "async_ps", "allreduce", "federated")
"""The registered topologies: each has a file ``distdqn/topologies/<name>.py`` with ``run``."""


def _finite_numbers(value: Any) -> Any:
    """Any value, but no NaN or infinity among its numbers (in lists and dicts too)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"Input should hold finite numbers only (got {value})")
    for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
        _finite_numbers(item)
    return value


MakeKwargs = Annotated[dict[str, Any], AfterValidator(_finite_numbers)]
"""Keyword arguments for ``gymnasium.make``: any values, every number finite."""


class _Section(BaseModel):
    # strict: no silent str -> number coercion; forbid: unknown keys are errors; frozen: a
    # validated config is data, never rewritten (derived values are properties); every float
    # finite (NaN and infinity are refused).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    def check(self, cfg: Config) -> None:
        """This section's checks against the rest of the config (raise ValueError naming the field)."""


class AtariConfig(_Section):
    """How ``ALE/<Game>-v5`` ids are stepped and preprocessed: one preprocessing, ale-py's C++
    ``AtariVectorEnv``, for training and evaluation alike. The defaults are the Nature DQN
    conventions (Mnih et al. 2015) with v5's sticky actions (Machado et al. 2018)."""

    noop_max: int = Field(30, ge=0)
    """Each episode starts with a uniform number in [0, noop_max] of no-op actions."""
    frame_skip: int = Field(4, ge=1)
    """Emulator frames per env step (the action repeated); each observation is the pixel-wise max
    of the last two of them (flicker removal)."""
    screen_size: int = Field(84, ge=8)
    """Frames are converted to grayscale and resized to screen_size x screen_size."""
    frame_stack: int = Field(4, ge=1)
    """Observations are the last frame_stack frames, [frame_stack, screen_size, screen_size] uint8."""
    terminal_on_life_loss: bool = True
    """Training only: a lost life ends the transition's bootstrapping (``terminated``) while the
    game goes on. Evaluation always scores whole games."""
    clip_rewards: bool = True
    """Training only: rewards clipped to [-1, 1]. Evaluation returns are unclipped game scores."""
    max_episode_frames: int = Field(108_000, ge=1)
    """Emulator frames after which an episode is truncated (108,000 = 30 minutes at 60 Hz)."""
    repeat_action_probability: float = Field(0.25, ge=0.0, le=1.0)
    """Sticky actions: each emulator frame repeats the previous action with this probability.
    0.25 is v5's default (Machado et al. 2018); the Nature setting is 0."""
    fire_reset: bool = False
    """Press FIRE after each reset, in games that need it to start (off in the Nature setting)."""


def describe_callable(obj: Any) -> str:
    """How a Python object handed to the API in place of a ``module:name`` appears in config.yaml:
    ``<python module.qualname>`` (not importable by that name; distdqn.load takes it again)."""
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"<python {getattr(obj, '__module__', None) or '?'}.{name}>"


def _check_reference(value: Any) -> str | Callable[..., Any]:
    if isinstance(value, str) or callable(value):
        return value
    raise ValueError(f"must be 'package.module:name' or, from the Python API, a callable (got {value!r})")


PythonReference = Annotated[Any, AfterValidator(_check_reference), PlainSerializer(
    lambda v: v if isinstance(v, str) else describe_callable(v), return_type=str, when_used="json")]
"""``package.module:name``, or (from the Python API) the object itself: written to config.yaml as
``<python module.qualname>``."""


class WrapperConfig(_Section):
    """One of the user's Gymnasium wrappers: ``wrapper(env, **kwargs)`` returns the wrapped env."""

    wrapper: PythonReference
    """``package.module:Wrapper`` (a ``gymnasium.Wrapper`` class, or any callable taking the env
    first), or from the Python API the class or callable itself."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments after the env."""


def _factory_name(make: Any) -> str:
    """The name a run of ``env.make`` goes by when ``env.id`` is not given: the function's name."""
    name = make.rpartition(":")[2] if isinstance(make, str) else (
        getattr(make, "__name__", None) or type(make).__name__)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "custom"


class EnvConfig(_Section):
    id: str = "CartPole-v1"
    """Any registered Gymnasium id with a discrete action space (CartPole-v1, LunarLander-v3,
    FrozenLake-v1, ...), ``ALE/<Game>-v5`` (Atari, ``pip install 'distdqn[atari]'``),
    ``MinAtar/<Game>-v1`` (``pip install 'distdqn[minatar]'``), or ``module:Id`` for an id that
    ``module`` registers when imported (imported in every process that makes the env; on a
    cluster the module travels with the run: docs/environments.md). With ``env.make``, only the
    run's name (default: the function's name)."""
    make: PythonReference | None = None
    """A function that makes the environment, ``package.module:function``, for environments that
    are not registered: called with ``env.kwargs``, it returns a new ``gymnasium.Env`` each call
    (from the Python API: the callable itself)."""
    wrappers: list[WrapperConfig] = Field(default_factory=list)
    """The user's wrappers, applied in order to each environment right after it is made, before
    distdqn's own (the observation encoding): ``[{wrapper: package.module:Wrapper, kwargs: {...}}]``,
    or just ``[package.module:Wrapper]``. Not for ``ALE/`` ids (stepped by ale-py's C++ vector env)."""
    num_envs: int = Field(8, ge=1, le=65_536)
    """Sub-environments stepped together as one vector env, per actor process."""
    kwargs: MakeKwargs = Field(default_factory=dict)
    """Extra keyword arguments for ``gymnasium.make`` (for example ``{gravity: 9.8}``)."""
    attributes: dict[str, float] = Field(default_factory=dict)
    """Physical parameters set on the environment after it is made, for ids that take them as
    attributes rather than ``gymnasium.make`` arguments: for CartPole ``gravity``, ``masscart``,
    ``masspole``, ``length`` (half the pole), ``force_mag``, ``tau`` (its derived masses follow).
    An attribute the environment does not have is an error."""
    max_episode_steps: int | None = Field(None, ge=1)
    """Override of the id's time limit; None keeps the registered one."""
    vectorization: Literal["auto", "native", "sync", "async"] = "auto"
    """How sub-environments are stepped: ``native`` uses the id's own vectorized implementation
    (CartPole-v1 has one), ``sync`` steps them in turn in this process, ``async`` in subprocesses;
    ``auto`` picks native when the id has one and no kwargs are given, else sync. ``ALE/`` ids are
    always stepped by ale-py's C++ ``AtariVectorEnv`` (auto or native)."""
    atari: AtariConfig = Field(default_factory=AtariConfig)
    """Preprocessing of ``ALE/`` ids (ignored for other ids)."""
    non_finite: Literal["error", "skip"] = "error"
    """What an actor does with a NaN or infinite observation or reward: ``error`` ends the run in
    one line naming the env and the field; ``skip`` drops the transitions that hold one (the steps
    counted as the summary's ``non_finite_steps``; a federated client's are not reported), and
    counts no reward of it in episode returns."""
    step_latency_ms: float = Field(0.0, ge=0.0, le=60_000.0)
    """A wait added to every step of the vector env, without using the CPU (a sleep): it models
    simulators in other processes or behind a network that answer a step this much later (all
    sub-environments of the vector at once). For benchmarks of scaling past the cores; 0: none."""

    @model_validator(mode="before")
    @classmethod
    def _name_after_factory(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("make") is not None and "id" not in data:
            return {**data, "id": _factory_name(data["make"])}
        return data

    @field_validator("wrappers", mode="before")
    @classmethod
    def _wrapper_shorthand(cls, wrappers: Any) -> Any:
        if isinstance(wrappers, list):
            return [{"wrapper": w} if isinstance(w, str) or callable(w) else w for w in wrappers]
        return wrappers

    def check(self, cfg: Config) -> None:
        if self.wrappers and self.make is None and self.id.startswith("ALE/"):
            raise ValueError(f"env.wrappers: {self.id} is stepped by ale-py's C++ AtariVectorEnv, which takes no "
                             "Gymnasium wrappers (use env.make with your own gymnasium.make and wrappers)")
        if self.vectorization == "native" and (self.make is not None or self.wrappers):
            raise ValueError("env.vectorization: native steps the id's own vector implementation, which takes "
                             "neither env.make nor env.wrappers (use auto, sync or async)")


HIDDEN_SIZES = {"mlp": [128, 128], "nature_cnn": [512], "minatar_cnn": [128]}
"""Each network kind's hidden layers when ``network.hidden_sizes`` is not set: the MLP's default,
the Nature DQN's head (Mnih et al. 2015), the MinAtar paper's (Young and Tian 2019)."""


class NetworkConfig(_Section):
    kind: Literal["auto", "mlp", "nature_cnn", "minatar_cnn"] = "auto"
    """``mlp`` for vector observations (and encoded ones: one-hot indices, flattened Dict and
    Tuple); ``nature_cnn`` for stacked [C, 84, 84] frames (Mnih et al. 2015: conv 32 8x8/4, 64
    4x4/2, 64 3x3/1, then hidden_sizes, [512] in the paper); ``minatar_cnn`` for MinAtar's
    channels-last [10, 10, C] boards (Young and Tian 2019: conv 16 3x3/1, then hidden_sizes, [128]
    in the paper); ``auto``: the one the observations fit (``core/networks.py: auto_kind``):
    nature_cnn for uint8 images with sides of at least 36, minatar_cnn for small square boards,
    else mlp."""
    hidden_sizes: list[int] | None = None
    """Widths of the hidden layers of the MLP (or of the CNN's fully connected part); None: the
    kind's usual ones (``HIDDEN_SIZES``: mlp [128, 128], nature_cnn [512], minatar_cnn [128]; with
    ``auto``, those of the kind it resolves to, once the environment is known)."""
    dueling: bool = False
    """Dueling head Q = V + A - mean(A) (Wang et al. 2016)."""
    atoms: int = Field(1, ge=1)
    """1: one value per action (DQN). More: C51 (Bellemare et al. 2017), a categorical
    distribution of the return over this many values evenly spaced in [v_min, v_max], learned by
    cross-entropy to the projected n-step target; the action values are its means, and prioritized
    replay uses the cross-entropy as priority. 51 in the paper and in Rainbow."""
    v_min: float = -10.0
    """Lowest return the categorical head can represent (``atoms > 1``); targets below are clipped to it."""
    v_max: float = 10.0
    """Highest return the categorical head can represent (``atoms > 1``); targets above are clipped to it."""

    @field_validator("hidden_sizes")
    @classmethod
    def _check_sizes(cls, sizes: list[int] | None) -> list[int] | None:
        if sizes is not None and (not sizes or any(h < 1 for h in sizes)):
            raise ValueError(f"must be a non-empty list of positive integers (got {sizes})")
        return sizes

    @property
    def layers(self) -> list[int]:
        """The hidden layers' widths: ``hidden_sizes``, or the kind's usual ones (``kind: auto`` is
        resolved for the env's observations first: local/build.py ``resolve_network``)."""
        if self.hidden_sizes is not None:
            return list(self.hidden_sizes)
        if self.kind == "auto":
            raise ValueError("network.kind: auto has no widths until it is resolved for the env "
                             "(local/build.py: resolve_network)")
        return list(HIDDEN_SIZES[self.kind])

    @field_serializer("hidden_sizes")
    def _resolved(self, sizes: list[int] | None) -> list[int] | None:
        # config.yaml records the widths used, as every default (auto: once resolved)
        return None if sizes is None and self.kind == "auto" else self.layers

    def check(self, cfg: Config) -> None:
        if self.atoms > 1 and self.v_min >= self.v_max:
            raise ValueError(f"network.v_max: must be above network.v_min ({self.v_max:g} <= {self.v_min:g})")


class ReplayConfig(_Section):
    capacity: int = Field(50_000, ge=1, le=1_000_000_000)
    """Transitions held; the oldest is overwritten when full. A replay that would not fit in this
    machine's memory is refused before the run starts."""
    prioritized: bool = False
    """Prioritized replay (Schaul et al. 2016) instead of uniform sampling."""
    alpha: float = Field(0.6, ge=0.0, le=1.0)
    """Priority exponent: P(i) = p_i^alpha / sum_k p_k^alpha; 0 is uniform."""
    beta_start: float = Field(0.4, ge=0.0, le=1.0)
    """Importance-sampling exponent at the start, annealed linearly to ``beta_end``."""
    beta_end: float = Field(1.0, ge=0.0, le=1.0)
    """Importance-sampling exponent at the end of annealing."""
    beta_anneal_env_steps: int | None = Field(None, ge=1)
    """Env steps over which beta goes from beta_start to beta_end; None: ``train.total_env_steps``."""
    priority_eps: float = Field(1e-6, gt=0.0)
    """Added to |TD error| so that no transition has priority zero."""
    n_step: int = Field(3, ge=1, le=1000)
    """Steps summed into each stored transition's return (n-step Q-learning)."""
    storage: Literal["auto", "full", "frames"] = "auto"
    """How observations are stored: ``full`` keeps each transition's obs and next_obs arrays;
    ``frames`` keeps each distinct frame of stacked uint8 observations [C, H, W] once and rebuilds
    the stacks when a batch is sampled (about 1/8 of the memory for 4-frame stacks); ``auto``:
    frames for uint8 observations with 3 dimensions, else full."""


class LearnerConfig(_Section):
    lr: float = Field(2.5e-3, gt=0.0, le=10.0)
    """Adam learning rate (at the start, if ``lr_end`` is set)."""
    lr_end: float | None = Field(None, gt=0.0)
    """If set, the learning rate decays linearly from ``lr`` to this over the run's planned learner
    updates (``train.total_env_steps * train.replay_ratio``), then stays there."""
    adam_eps: float = Field(1e-8, gt=0.0)
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    """Discount per environment step; n-step transitions use gamma^n."""
    batch_size: int = Field(64, ge=1, le=1_048_576)
    """Transitions per learner update."""
    double_dqn: bool = True
    """Double DQN target (van Hasselt et al. 2016): argmax with the online net, value from the target."""
    loss: Literal["huber", "mse"] = "huber"
    huber_delta: float = Field(1.0, gt=0.0)
    max_grad_norm: float | None = Field(10.0, gt=0.0)
    """Clip the global gradient L2 norm to this; None disables clipping."""
    target_update: Literal["hard", "soft"] = "hard"
    """``hard``: copy online -> target every ``target_update_period`` updates; ``soft``: Polyak with ``tau``."""
    target_update_period: int = Field(100, ge=1)
    """Learner updates between hard target copies."""
    tau: float = Field(0.005, gt=0.0, le=1.0)
    """Soft update rate: target <- tau * online + (1 - tau) * target, after every update."""
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    """Where the learner's networks live; ``auto`` takes CUDA when available."""
    kernel: Literal["auto", "autograd", "fused_mlp"] = "auto"
    """How an update is computed: ``autograd`` is plain PyTorch for any network; ``fused_mlp`` a
    hand-derived forward/backward for ReLU MLPs (same math, a few times fewer small ops);
    ``auto`` uses fused_mlp where it applies."""
    model_parallel: int = Field(1, ge=1)
    """Ranks (processes) the learner's network is split across, tensor-parallel: the linear layers
    of the MLP (or of the CNN's fully connected part) in column- then row-split pairs, one
    all-reduce per pair. To the rest of the run the ranks are one learner (``single``: local
    processes; ``apex``: Ray actors on the learner's node). Every hidden size must divide by it.
    Pays only for wide layers (docs/model_parallel.md); the data-parallel topologies refuse it."""
    model_parallel_timeout_s: float = Field(60.0, gt=0.0)
    """Longest wait for the learner's ranks to form their group and for any exchange between
    them; a rank that dies or stalls ends the run with an error within about this long."""
    max_non_finite_updates: int = Field(100, ge=1)
    """A learner update whose loss or gradient is NaN or infinite is skipped (the parameters and
    optimizer left as they were, its priorities not written, counted as ``non_finite_updates``);
    this many in a row end the run with an error. A parameter server likewise never applies a
    non-finite update, and ends the run after this many in a row."""

    def check(self, cfg: Config) -> None:
        p, n = self.model_parallel, cfg.network
        if self.batch_size > cfg.replay.capacity:
            raise ValueError(f"learner.batch_size: must be <= replay.capacity ({self.batch_size} > {cfg.replay.capacity})")
        if self.kernel == "fused_mlp" and n.atoms > 1:
            raise ValueError("learner.kernel: fused_mlp computes the one-value-per-action loss; network.atoms > 1 "
                             "needs auto or autograd")
        if p == 1:
            return
        if cfg.topology not in ("single", "apex"):
            raise ValueError(f"learner.model_parallel: {cfg.topology} does not split its learners across ranks "
                             f"(only single and apex do); use 1")
        resolved = n.kind != "auto" or n.hidden_sizes is not None   # else checked once resolved for the env
        if resolved and any(h % p for h in n.layers):
            raise ValueError(f"learner.model_parallel: {p} ranks must divide every hidden size "
                             f"(network.hidden_sizes is {n.layers})")
        if n.atoms > 1:
            raise ValueError("learner.model_parallel: the categorical head (network.atoms > 1) is not split "
                             "across ranks; use 1")
        if self.kernel == "fused_mlp":
            raise ValueError("learner.model_parallel: the fused_mlp kernel does not split across ranks "
                             "(use learner.kernel auto or autograd)")


class ExplorationConfig(_Section):
    schedule: Literal["linear", "exponential", "constant"] = "linear"
    eps_start: float = Field(1.0, ge=0.0, le=1.0)
    eps_end: float = Field(0.02, ge=0.0, le=1.0)
    decay_env_steps: int = Field(5_000, ge=1)
    """Linear: env steps from eps_start to eps_end. Exponential: env steps per factor of e."""


class TrainConfig(_Section):
    total_env_steps: int = Field(40_000, ge=1, le=10**13)
    """Environment steps (summed over sub-environments) after which training stops."""
    max_wall_s: float | None = Field(None, gt=0)
    """Wall-clock budget in seconds (a resumed run counts its earlier time): training stops at the
    first check past it, or at ``total_env_steps``, whichever comes first; then the final
    evaluation and checkpoint as usual. None: no time limit."""
    learning_starts: int = Field(500, ge=0)
    """Environment steps collected before the first learner update."""
    replay_ratio: float = Field(0.5, gt=0.0)
    """Learner updates per environment step (0.5: one update every 2 env steps)."""
    steps_per_collect: int = Field(4, ge=1)
    """Vector-env steps collected between two learner phases (each gives ``num_envs`` env steps)."""
    torch_threads: int | None = Field(None, ge=1)
    """Threads for torch in each process; None: 1 for MLPs in ``single`` (small matmuls lose to
    thread synchronisation), the machine's cores for CNNs, each worker's ``workers.cpus``."""


class EvalConfig(_Section):
    interval_env_steps: int = Field(2_000, ge=1)
    """Environment steps between greedy evaluations."""
    episodes: int = Field(10, ge=10)
    """Greedy episodes per evaluation (at least 10: the solved criterion averages them)."""
    num_envs: int = Field(10, ge=1)
    """Evaluation sub-environments stepped together."""
    epsilon: float = Field(0.0, ge=0.0, le=1.0)
    """Exploration during evaluation; 0 is greedy."""
    solve_threshold: float | None = None
    """Mean evaluation return that counts as solved; None uses the id's reward_threshold (475 for CartPole-v1)."""
    stop_when_solved: bool = False
    """End the run at the first evaluation that reaches the threshold."""


class WandbConfig(_Section):
    """Weights & Biases (``pip install 'distdqn[wandb]'``): every metrics row, the resolved config
    and the summary, beside metrics.jsonl and TensorBoard. Off unless ``mode`` says otherwise."""

    mode: Literal["off", "online", "offline"] = "off"
    """``online`` syncs as the run goes (``wandb login`` first, or WANDB_API_KEY); ``offline``
    writes the run under the run directory's ``wandb/`` only (``wandb sync`` uploads it later)."""
    project: str = "distdqn"
    entity: str | None = None
    """The W&B team or user; None: the logged-in user's default."""
    name: str | None = None
    """The W&B run's name; None: the run directory's name."""
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class LogConfig(_Section):
    interval_env_steps: int = Field(2_000, ge=1)
    """Environment steps between rows of metrics.jsonl (and TensorBoard scalars)."""
    tensorboard: bool = True
    progress: bool = True
    """Terminal progress bar (only drawn when the output is a terminal)."""
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    """Weights & Biases, off by default."""


class CheckpointConfig(_Section):
    interval_env_steps: int | None = Field(None, ge=1)
    """Environment steps between periodic checkpoints; None: by ``interval_s`` alone."""
    interval_s: float | None = Field(300.0, gt=0.0)
    """Wall-clock seconds between periodic checkpoints (beside ``interval_env_steps``), so that a
    run killed without warning (SIGKILL, out of memory, a lost machine) loses at most about this
    much; None: none by time (with interval_env_steps None, only the final checkpoint). SIGTERM
    and SIGINT end a run with a final checkpoint whatever this is."""
    keep: int = Field(2, ge=1)
    """Periodic checkpoints kept (oldest deleted first); the final one is always kept."""
    save_replay: bool = True
    """Include the replay buffer, so that a resumed run continues exactly."""
    keep_best: bool = True
    """Keep ``checkpoints/best`` beside the others: the network of the best greedy evaluation so
    far (rewritten whenever one beats every earlier one; weights only, not resumable).
    ``distdqn evaluate``, ``export`` and ``distdqn.load`` take it by default."""


class ApexConfig(_Section):
    """Ape-X (Horgan et al. 2018): actors -> central prioritized replay -> learner."""

    num_actors: int = Field(2, ge=1, le=4096)
    """Actor processes, each with its own vector env of ``env.num_envs`` sub-environments."""
    base_epsilon: float = Field(0.4, ge=0.0, le=1.0)
    epsilon_alpha: float = Field(7.0, ge=0.0)
    """Each of the num_actors * num_envs sub-environments i explores with
    eps_i = base_epsilon^(1 + i / (count - 1) * epsilon_alpha), fixed (the paper's per-actor epsilons)."""
    weight_sync_period: int = Field(50, ge=1)
    """Learner updates between weight publications; actors pick up the newest at their next call."""
    blocks_per_call: int = Field(16, ge=1)
    """``Actor.collect`` calls (of ``train.steps_per_collect`` vector steps) per remote call from
    the driver (episode statistics and env step counts come back between calls)."""
    blocks_per_insert: int | None = Field(None, ge=1)
    """Blocks per insert into the replay. Each insert's answer carries the newest weights the
    learner published, so an actor acts at most about one insert's worth of updates behind them.
    None: the env steps the learner trains ``weight_sync_period`` updates on (weight_sync_period /
    replay_ratio), so that inserts come about as often as publications whatever the ratio: each
    message costs CPU that, on a small machine, the learner's core pays for too."""
    updates_per_call: int = Field(64, ge=1)
    """Learner updates per remote call (metrics and weights come back between calls)."""
    calls_in_flight: int = Field(2, ge=1)
    """Calls queued for each actor and for the learner, so that neither idles waiting for the
    driver between calls (the queued call's weights are then at most one call older)."""
    batches_per_sample: int = Field(16, ge=1)
    """Batches fetched from the replay per request (the next request is in flight while they train)."""
    slack_updates: int = Field(256, ge=1)
    """How far (in learner updates) either side may run ahead of the replay ratio before it waits."""
    actor_cpus: float = Field(1.0, ge=0.0)
    learner_cpus: float = Field(1.0, ge=0.0)
    learner_gpus: float = Field(0.0, ge=0.0)
    """GPUs for the learner (learner.device auto/cuda uses one when this is > 0)."""
    isolate_learner: bool = True
    """Give the learner's training thread ceil(learner_cpus) cores of its own on its node (Linux
    CPU affinity): the learner process's other threads and the run's other processes there
    (actors, a replay server, the driver, and the Ray instance the run started) keep off them.
    Skipped where the node has no core to spare. Two apex runs at once on one node would both
    take its last cores: turn this off for such runs."""
    replay_host: Literal["learner", "process"] = "learner"
    """Where the central replay lives: in the learner's process (actors insert there; the learner
    samples and returns priorities without a message), or in a process of its own (``process``:
    sampling and inserting then run beside the learner's updates, at the price of a message for
    each group of batches and each priority update)."""
    replay_cpus: float = Field(0.0, ge=0.0)
    """CPUs reserved for the replay's own process (replay_host=process), and for each shard."""
    replay_shards: int | str = 1
    """Shards of the replay, each a process of its own (replay_host=process) with replay_cpus;
    ``per_host``: one on every node of the cluster. ``replay.capacity`` is the whole replay's
    (each shard holds its share). Each actor inserts into a shard on its own node; the learners
    draw from every shard in proportion to its priority mass, so that a batch follows the
    distribution of one replay holding the same transitions and priorities, and send each new
    priority back to the shard its transition came from; the replay ratio is held over all
    shards. A checkpoint holds every shard and is resumed with the same number."""
    num_learners: int = Field(1, ge=1)
    """Data-parallel learners (replay_host=process beyond 1), each with learner_cpus and
    learner_gpus and a full replica: each draws ``learner.batch_size / num_learners`` of every
    batch and they average every update's gradient, so that they stay identical; learner 0
    publishes the weights. Each learner's training thread gets cores of its own
    (isolate_learner) where its node has them for every learner there."""
    group_backend: Literal["auto", "shm", "gloo", "nccl"] = "auto"
    """How the learners average gradients: ``shm`` through shared memory (every learner on one
    node, CPU learners), ``gloo`` / ``nccl`` with torch.distributed; ``auto``: nccl for GPU
    learners, shm when every learner is on one node, else gloo."""
    stall_timeout_s: float = Field(120.0, gt=0.0)
    """The run ends with an error if no actor or learner call completes for this long (also the
    longest wait of a learner for the others of its group)."""

    def check(self, cfg: Config) -> None:
        shards = self.replay_shards
        if shards != "per_host" and (isinstance(shards, str) or shards < 1):
            raise ValueError(f"apex.replay_shards: must be at least 1, or per_host (got {shards!r})")
        for name, value in (("replay_shards", shards), ("num_learners", self.num_learners)):
            if value != 1 and self.replay_host == "learner":
                raise ValueError(f"apex.replay_host: learner hosts one replay for one learner; "
                                 f"apex.{name}={value} needs replay_host=process")
        if self.group_backend == "shm" and self.learner_gpus > 0:
            raise ValueError("apex.group_backend: shm averages CPU gradients; GPU learners need nccl or auto")
        if cfg.topology != "apex":
            return
        if cfg.learner.batch_size % self.num_learners:
            raise ValueError(f"apex.num_learners: {self.num_learners} learners cannot share "
                             f"learner.batch_size {cfg.learner.batch_size} equally")
        if self.num_learners > 1 and cfg.learner.model_parallel > 1:
            raise ValueError("apex.num_learners: a group of learners does not split each learner across "
                             "ranks (learner.model_parallel); use one of them")


class WorkersConfig(_Section):
    """The workers of the data-parallel topologies (sync_ps, async_ps, allreduce). Each is a process
    with its own vector env of ``env.num_envs`` sub-environments, its own local replay and a full
    model replica. ``train.replay_ratio`` and ``train.learning_starts`` apply to each worker's own
    replay (batches drawn per local env step), so with N workers each learner update averages N
    batches and there are replay_ratio / N updates per env step of the whole run."""

    num_workers: int = Field(2, ge=1, le=4096)
    cpus: float = Field(1.0, gt=0.0)
    """CPUs reserved per worker (its torch threads follow, unless ``train.torch_threads`` is set)."""
    gpus: float = Field(0.0, ge=0.0)
    """GPUs per worker (``learner.device`` auto/cuda uses one when this is > 0)."""
    resources: dict[str, float] = Field(default_factory=dict)
    """Ray custom resources each worker needs: where workers may run. For example ``{worker_host:
    1}`` with ``ray start ... --resources='{"worker_host": 8}'`` on the nodes meant for workers
    (the driver, and so a parameter server, runs where ``distdqn train`` runs). Empty: any node."""
    stall_timeout_s: float = Field(120.0, gt=0.0)
    """The run ends with an error if no worker call completes for this long."""


class SyncPSConfig(_Section):
    """Synchronous parameter server: every round the server waits for the workers, then updates."""

    mode: Literal["gradient", "model"] = "gradient"
    """``gradient``: theta <- theta - lr * mean_i(grad_i) (through the server's Adam), one learner update
    per round; ``model``: each worker takes ``local_steps`` updates from theta, then
    theta <- theta + (1/N) sum_i (theta_i - theta)."""
    local_steps: int = Field(8, ge=1)
    """Local learner updates per worker per round in the model form (counted as that many updates)."""
    round_timeout_s: float = Field(10.0, gt=0.0)
    """A worker that has not answered this long after a round began is left out of the round (its
    late update is dropped, and counted); the round goes on with those that answered."""
    min_workers: int = Field(1, ge=1)
    """Answers a round needs; with fewer it keeps waiting, up to ``workers.stall_timeout_s``."""

    transport: Literal["auto", "shm", "tcp", "ray"] = "auto"
    """How weights and updates travel between the server and its workers (runtime/updates/):
    ``shm``: each worker runs its own loop and meets the server in shared memory (every worker on
    the server's host; CPU learners); ``tcp``: the same loops over a socket to the server (workers
    on any host; CPU learners); ``ray``: the arguments and answers of a Ray call per update (any
    cluster, GPU learners). ``auto``: each worker on the cheapest path that reaches it (shm on
    the server's host, tcp elsewhere, decided by probing), ray for GPU learners."""

    def check(self, cfg: Config) -> None:
        if self.min_workers > cfg.workers.num_workers:
            raise ValueError(f"sync_ps.min_workers: must be <= workers.num_workers "
                             f"({self.min_workers} > {cfg.workers.num_workers})")


class AsyncPSConfig(_Section):
    """Asynchronous parameter server (Gorila, Nair et al. 2015; A3C-style): workers push whenever ready."""

    mode: Literal["gradient", "parameter"] = "gradient"
    """``gradient``: each arriving gradient is applied at once (the server's Adam); ``parameter``:
    each arriving worker model is mixed in, theta <- theta + mixing_rate * (theta_i - theta)."""
    max_staleness: int = Field(16, ge=0)
    """Updates computed more than this many server versions ago are dropped (and counted)."""
    pull_period: int = Field(4, ge=1)
    """Gradient form: a worker takes fresh weights every this many of its gradients."""
    local_steps: int = Field(8, ge=1)
    """Parameter form: local learner updates per push (a worker pulls fresh weights at every push)."""
    mixing_rate: float = Field(0.5, gt=0.0, le=1.0)
    """eta of the parameter form."""
    transport: Literal["auto", "shm", "tcp", "ray"] = "auto"
    """As ``sync_ps.transport``: ``shm``, ``tcp`` (the workers' own loops; CPU learners), ``ray`` (a
    Ray call per update), ``auto`` (each worker on the cheapest path that reaches it)."""


class AllReduceConfig(_Section):
    """Decentralized data parallelism: workers average gradients with torch.distributed all-reduce."""

    backend: Literal["auto", "shm", "gloo", "nccl"] = "auto"
    """How gradients are averaged: ``shm`` through shared memory (every rank on one node, CPU
    learners), ``gloo`` / ``nccl`` with torch.distributed. ``auto``: nccl when the learners are on
    CUDA devices, shm when every rank is on one node, else gloo."""
    updates_per_call: int = Field(32, ge=1)
    """Synchronized updates per remote call (metrics and rank 0's weights come back between calls)."""
    collective_timeout_s: float = Field(60.0, gt=0.0)
    """Longest wait for the process group to form and for any all-reduce; a rank that dies or
    stalls ends the run with an error within about this long."""


class ClientConfig(_Section):
    """One federated client's own environment: overrides of ``env.kwargs`` and ``env.attributes``."""

    kwargs: MakeKwargs = Field(default_factory=dict)
    attributes: dict[str, float] = Field(default_factory=dict)
    """For example ``{length: 0.7, masspole: 0.15}`` for a CartPole with a longer, heavier pole."""


class DPConfig(_Section):
    """Client-level differential privacy (the privacy unit is a client's whole data); its cost is
    reported as (epsilon, delta) in every metrics row, the summary and the CLI's last line."""

    mode: Literal["off", "central", "local"] = "off"
    """``central``: DP-FedAvg (McMahan et al. 2018): each round samples every client with
    probability ``federated.clients_per_round``; the server clips each update to ``clip``, adds
    Gaussian noise of standard deviation ``noise_multiplier * clip`` to their sum and divides by the
    expected number of clients (the server is trusted; the global model is private). ``local``:
    each client clips and noises its own update before sending it (the server is not trusted;
    more noise for the same epsilon). ``off``: no clipping, no noise, no accounting."""
    clip: float | None = Field(None, gt=0.0)
    """L2 norm S each client's update is clipped to (needed by ``central`` and ``local``)."""
    noise_multiplier: float = Field(1.0, ge=0.0)
    """z: the Gaussian noise's standard deviation is z * clip (on the sum: central; on each update:
    local). 0 clips only, and epsilon is infinite."""
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    """delta of the reported (epsilon, delta); below 1 / (number of clients)."""


class FederatedConfig(_Section):
    """Federated averaging (McMahan et al. 2017): ``workers.num_workers`` clients each keep their
    environment and replay; only model updates travel to the server."""

    clients: list[ClientConfig] = Field(default_factory=list)
    """Per-client environment variants, one per worker (client i gets entry i); empty: all use ``env``."""
    clients_per_round: float = Field(1.0, gt=0.0, le=1.0)
    """Fraction C of the clients sampled each round (at least one); under ``dp.mode: central``
    each client is sampled independently with this probability instead (Poisson sampling, which
    the accountant assumes)."""
    local_steps: int = Field(50, ge=1)
    """Local learner updates E per sampled client per round (counted as E learner updates a round)."""
    aggregator: Literal["fedavg", "median", "trimmed_mean"] = "fedavg"
    """``fedavg``: Delta = sum_k (n_k / n) (theta_k - theta), n_k the samples client k holds;
    ``median`` / ``trimmed_mean``: coordinate-wise, robust to a minority of clients sending garbage."""
    trim: int = Field(1, ge=0)
    """Updates dropped from each end, per coordinate, by ``trimmed_mean``."""
    server_optimizer: Literal["fedavg", "fedavgm", "fedadam", "fedyogi"] = "fedavg"
    """The server's step along the aggregate Delta (Reddi et al. 2021): ``fedavg`` theta += lr Delta;
    ``fedavgm`` with momentum ``server_beta1``; ``fedadam`` / ``fedyogi`` adaptive per coordinate."""
    server_lr: float | None = Field(None, gt=0.0)
    """The server's learning rate; None: 1 for fedavg and fedavgm, 0.01 for fedadam and fedyogi
    (their steps are about lr per coordinate whatever Delta's size)."""
    server_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    """Momentum (fedavgm) or first-moment decay (fedadam, fedyogi)."""
    server_beta2: float = Field(0.99, ge=0.0, lt=1.0)
    """Second-moment decay (fedadam, fedyogi)."""
    server_tau: float = Field(1e-3, gt=0.0)
    """Adaptivity tau of fedadam and fedyogi: Delta / (sqrt(v) + tau)."""
    proximal_mu: float = Field(0.0, ge=0.0)
    """FedProx (Li et al. 2020): mu > 0 adds mu/2 ||theta_k - theta||^2 to each client's loss."""
    round_timeout_s: float = Field(30.0, gt=0.0)
    """Clients that have not answered this long after a round began are skipped for the round."""
    late_updates: Literal["drop", "stale_weighted"] = "drop"
    """What becomes of the update of a client that answers after its round's deadline: ``drop``
    it (its env steps still count), or fold it into the next aggregate with weight
    n_k * (1 + s)^-late_exponent, s the model versions it is behind (FedAsync / FedBuff);
    counted as ``late_used`` and ``late_dropped``. Needs the fedavg aggregator and no central DP."""
    late_exponent: float = Field(0.5, ge=0.0)
    """Staleness discount exponent a of ``stale_weighted`` (0.5: FedBuff's 1 / sqrt(1 + s))."""
    min_clients: int = Field(1, ge=1)
    """Answers a round needs; with fewer, the round is abandoned (the global model is unchanged) and
    the run says so."""
    dp: DPConfig = Field(default_factory=DPConfig)
    """Client-level differential privacy and its accountant."""

    @property
    def server_learning_rate(self) -> float:
        if self.server_lr is not None:
            return self.server_lr
        return 1.0 if self.server_optimizer in ("fedavg", "fedavgm") else 0.01

    def check(self, cfg: Config) -> None:
        n, dp = cfg.workers.num_workers, self.dp
        if self.clients and len(self.clients) != n:
            raise ValueError(f"federated.clients: one entry per client is needed ({len(self.clients)} given, "
                             f"workers.num_workers is {n})")
        if self.min_clients > n:
            raise ValueError(f"federated.min_clients: must be <= workers.num_workers ({self.min_clients} > {n})")
        if dp.mode != "off" and dp.clip is None:
            raise ValueError(f"federated.dp.clip: needed by federated.dp.mode={dp.mode} (the noise is scaled by it)")
        if dp.mode != "off" and dp.delta >= 1 / n:
            raise ValueError(f"federated.dp.delta: must be below 1 / workers.num_workers = {1 / n:g} (got {dp.delta:g}; "
                             f"at 1/n, publishing one client's data whole would meet it)")
        if dp.mode == "central" and self.aggregator != "fedavg":
            raise ValueError(f"federated.aggregator: federated.dp.mode=central noises a sum, so it needs fedavg "
                             f"(got {self.aggregator})")
        if self.late_updates == "stale_weighted" and self.aggregator != "fedavg":
            raise ValueError(f"federated.late_updates: stale_weighted weights updates, so it needs "
                             f"federated.aggregator=fedavg (got {self.aggregator})")
        if self.late_updates == "stale_weighted" and dp.mode == "central":
            raise ValueError("federated.late_updates: stale_weighted cannot be used with federated.dp.mode=central "
                             "(a late update would count in a round it was not sampled for)")


class ClusterConfig(_Section):
    address: str | None = None
    """Ray cluster to join (host:port, or ``auto``); None starts a local instance (or uses RAY_ADDRESS)."""
    connect_timeout_s: float = Field(30.0, gt=0.0)
    """Longest wait for the cluster to start or answer."""


class Config(_Section):
    topology: Literal[TOPOLOGIES] = "single"
    """How the algorithm is spread over processes (see distdqn/topologies)."""
    seed: int = Field(0, ge=0)
    env: EnvConfig = Field(default_factory=EnvConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    apex: ApexConfig = Field(default_factory=ApexConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    sync_ps: SyncPSConfig = Field(default_factory=SyncPSConfig)
    async_ps: AsyncPSConfig = Field(default_factory=AsyncPSConfig)
    allreduce: AllReduceConfig = Field(default_factory=AllReduceConfig)
    federated: FederatedConfig = Field(default_factory=FederatedConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _check_sections(self) -> Config:
        """Each section's checks against the rest (they live with their section)."""
        for name in type(self).model_fields:
            section = getattr(self, name)
            if isinstance(section, _Section):
                section.check(self)
        return self

    # ---- derived values ----
    def for_client(self, index: int) -> Config:
        """This config with federated client ``index``'s environment variant (itself if none)."""
        if not self.federated.clients:
            return self
        client = self.federated.clients[index]
        env = self.env.model_copy(update={"kwargs": {**self.env.kwargs, **client.kwargs},
                                          "attributes": {**self.env.attributes, **client.attributes}})
        return self.model_copy(update={"env": env})

    @property
    def learning_starts_env_steps(self) -> int:
        """Updates begin once this many env steps are collected and a batch can be drawn."""
        return max(self.train.learning_starts, self.learner.batch_size)

    # ---- (de)serialisation ----
    def __eq__(self, other: object) -> bool:
        """Configs are equal when they resolve to the same run (a default left unset equals the
        value it resolves to)."""
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_yaml())

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Loading, with YAML that reads 1e-3 as a float (PyYAML's YAML 1.1 reads it as a string).

class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None


def set_field(raw: dict[str, Any], key: str, value: Any, source: str | None = None) -> None:
    """Set the field at the dotted path ``key`` of an unvalidated config mapping to ``value``
    (sections created as needed); ``source`` names the override in errors."""
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{source or key!r}: expected a dotted field path, for example replay.capacity")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section (from {source or key})")
        node = child
    node[parts[-1]] = value


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override; the value is parsed as YAML (``3``, ``1e-3``, ``[64, 64]``)."""
    key, sep, value = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, for example replay.capacity=50000")
    set_field(raw, key, parse_yaml(value, f"--set {key}"), f"--set {key}")


def _format_validation_error(exc: ValidationError) -> str:
    messages = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        msg = msg.removeprefix("Value error, ")
        if ": " in msg and not loc:
            messages.append(msg)  # a cross-field check names its own path
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] != "value_error" and not isinstance(err.get("input"), dict | type(None)):
            msg = f"{msg} (got {err['input']!r})"
        messages.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(messages)


def config_from_dict(raw: Any, source: str = "config") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def _preset_files() -> dict[str, Traversable]:
    """The presets shipped in the package, by name (the file's stem)."""
    folder = resources.files("distdqn") / "presets"
    return {f.name.removesuffix(".yaml"): f for f in folder.iterdir() if f.name.endswith(".yaml")}


def preset_names() -> list[str]:
    return sorted(_preset_files())


def preset_description(name: str) -> str:
    """A preset's one-line description: its first line, a YAML comment ("" if it has none)."""
    first_line = _preset_files()[name].read_text().partition("\n")[0]
    return first_line.removeprefix("#").strip() if first_line.startswith("#") else ""


def _read_config(path_or_name: str | Path) -> tuple[str, str]:
    """(source, YAML text) of a config: the file at ``path_or_name`` if there is one, else the
    preset so named. The source names it in error messages."""
    path = Path(path_or_name)
    if path.is_file():
        return str(path), path.read_text()
    presets = _preset_files()
    name = str(path_or_name)
    if name in presets:
        return name, presets[name].read_text()
    raise ConfigError(f"{name}: no such config file or preset (presets: {', '.join(sorted(presets))})")


def raw_config(path: str | Path | None) -> tuple[str, dict[str, Any]]:
    """(source, the unvalidated mapping) of a YAML config file or preset; ("config", {}) for None."""
    if path is None:
        return "config", {}
    source, text = _read_config(path)
    loaded = parse_yaml(text, source)
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    return source, loaded or {}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                seed: int | None = None) -> Config:
    """Read a YAML config file or preset (or the defaults when ``path`` is None), apply ``--set``
    overrides, validate."""
    source, raw = raw_config(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    if seed is not None:
        raw["seed"] = seed
    return config_from_dict(raw, source)
