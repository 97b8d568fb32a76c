"""The Python API: train, load, evaluate, export. The ``distdqn`` command is a thin layer over it.

    import distdqn

    run = distdqn.train("cartpole", overrides={"train.total_env_steps": 20_000}, seed=1)
    run.dir, run.summary["final_eval_return_mean"], run.metrics[-1]
    agent = distdqn.load(run.dir)                # checkpoints/best (else latest)
    agent.act(obs), agent.q_values(obs)
    distdqn.evaluate(run.dir, episodes=20).mean
    distdqn.export(run.dir, "agent.onnx")

``config`` is a preset name, a YAML path, a dict or a ``Config``; ``env`` an env id (``module:Id``
included) or a factory: a callable that returns a new ``gymnasium.Env`` (each sub-environment,
evaluation and worker makes its own; on a cluster it travels to the workers with the run).
``overrides`` are applied before validation, as ``--set`` is: a dict of dotted paths to values, or
``key=value`` strings. Errors a user can fix are ``distdqn.errors.UserError`` (one line naming the
field), raised before anything is written.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

from distdqn.agent import Agent, Evaluation, checkpoint_path, read_checkpoint
from distdqn.agent import load as load_agent
from distdqn.checkpoint import BEST, MUST_MATCH, Checkpoint, open_checkpoint
from distdqn.config import (
    Config,
    apply_override,
    config_from_dict,
    parse_yaml,
    raw_config,
    set_field,
)
from distdqn.envs import EnvInfo, env_info
from distdqn.errors import CheckpointError, ConfigError, EnvironmentSpecError, UserError
from distdqn.metrics import read_metrics

ConfigLike = str | Path | Mapping[str, Any] | Config | None
"""A preset name, a YAML file, an unvalidated mapping, a ``Config``, or None (the defaults)."""
EnvLike = str | Callable[..., gym.Env] | None
"""An env id (``CartPole-v1``, ``module:Id``) or a factory that returns a new ``gymnasium.Env``."""
Overrides = Mapping[str, Any] | Iterable[str] | None
"""``{"learner.lr": 1e-3}`` (values as they are) or ``["learner.lr=1e-3"]`` (values parsed as YAML)."""


@dataclass
class Run:
    """A finished (or stopped) run: its directory, resolved config and summary (summary.json)."""

    dir: Path
    config: Config
    summary: dict[str, Any]

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl."""
        return read_metrics(self.dir)

    def load(self, checkpoint: str | None = None) -> Agent:
        """The trained agent (``distdqn.load(run.dir, checkpoint)``, the factory handed on)."""
        return load(self.dir, checkpoint, env=self.config.env.make if callable(self.config.env.make) else None)


# ---- configs ----

def _copy(raw: Any) -> Any:
    """Nested dicts and lists copied; leaves (callables included) kept as they are."""
    if isinstance(raw, Mapping):
        return {k: _copy(v) for k, v in raw.items()}
    if isinstance(raw, list | tuple):
        return [_copy(v) for v in raw]
    return raw


def _raw(config: ConfigLike) -> tuple[str, dict[str, Any]]:
    if config is None or isinstance(config, str | Path):
        return raw_config(config)
    if isinstance(config, Config):
        return "config", config.model_dump()   # Python mode: an env factory stays the callable it is
    if isinstance(config, Mapping):
        return "config", _copy(config)
    raise ConfigError(f"config: expected a preset name, a YAML path, a mapping or a distdqn Config, "
                      f"not a {type(config).__name__}")


def _reference(factory: Callable[..., Any]) -> str | Callable[..., Any]:
    """``module:qualname`` when that name imports back to ``factory`` in another process (so that
    config.yaml names it and a resumed run finds it), else ``factory`` itself."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return factory
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return factory
    return f"{module}:{qualname}" if obj is factory else factory


def _set_env(raw: dict[str, Any], env: EnvLike) -> None:
    section = raw.setdefault("env", {})
    if not isinstance(section, dict):
        raise ConfigError("env: is a value, not a section")
    if isinstance(env, gym.Env):
        raise ConfigError("env: pass a factory (a callable that returns a new env, for example "
                          "lambda: MyEnv()), not an env instance: distdqn makes one env per sub-environment, "
                          "evaluation and worker")
    if isinstance(env, str):
        section.pop("make", None)
        section["id"] = env
    elif callable(env):
        section.pop("id", None)   # named after the factory (config.py: EnvConfig)
        section["make"] = _reference(env)
    else:
        raise ConfigError(f"env: expected an env id or a factory, not a {type(env).__name__}")


def _apply(raw: dict[str, Any], overrides: Overrides, seed: int | None, address: str | None) -> None:
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_field(raw, key, value, key)
    else:
        for assignment in overrides or ():
            apply_override(raw, assignment)
    if seed is not None:
        raw["seed"] = seed
    if address is not None:
        set_field(raw, "cluster.address", address, "--address")


def make_config(config: ConfigLike = None, *, env: EnvLike = None, overrides: Overrides = None,
                seed: int | None = None, address: str | None = None) -> Config:
    """The validated config: ``config`` with ``env``, ``overrides``, ``seed`` and the cluster
    ``address`` applied to its unvalidated form (a validated config is never changed)."""
    source, raw = _raw(config)
    if env is not None:
        _set_env(raw, env)
    _apply(raw, overrides, seed, address)
    return config_from_dict(raw, source)


# ---- checks before anything is written ----

# Fields that must agree between a checkpoint and the config it is resumed with (both resolved
# for the env: network.kind auto as built): checkpoint.MUST_MATCH and the user's env's own.
_MUST_MATCH = (*MUST_MATCH, "env.make", "env.wrappers")


def _field(cfg_dict: dict, path: str) -> Any:
    node = cfg_dict
    for part in path.split("."):
        node = node[part]
    return node


def check_compatible(checkpoint_cfg: Config, cfg: Config, info: EnvInfo, where: Path) -> None:
    """A one-line CheckpointError naming the first field of ``_MUST_MATCH`` that differs."""
    from distdqn.local.build import resolve_network
    a, b = resolve_network(checkpoint_cfg, info).to_dict(), resolve_network(cfg, info).to_dict()
    for path in _MUST_MATCH:
        if _field(a, path) != _field(b, path):
            raise CheckpointError(f"{where}: checkpoint does not match the config: {path} is "
                                  f"{_field(a, path)!r} in the checkpoint, {_field(b, path)!r} now")


def check_devices(cfg: Config) -> None:
    if cfg.learner.device == "cuda" and cfg.topology == "single":  # elsewhere the GPU may be on another node
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("learner.device: cuda was asked for but no CUDA device is available "
                              "(use auto or cpu)")


def _check_network(cfg: Config, info: EnvInfo) -> Config:
    """``cfg`` with its network resolved for the env (``network.kind: auto``: local/build.py
    ``resolve_network``), once the network is known to take the env's observations (checked
    before any process starts)."""
    from distdqn.local.build import build_network, resolve_network
    cfg = resolve_network(cfg, info)
    try:
        build_network(cfg, info)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


def _check_client_envs(cfg: Config) -> None:
    """Each federated client's environment variant can be made (checked here, before anything is
    written, rather than when a client process starts on the cluster)."""
    if cfg.topology != "federated":
        return
    for i in range(len(cfg.federated.clients)):
        try:
            env_info(cfg.for_client(i).env)
        except EnvironmentSpecError as exc:
            raise EnvironmentSpecError(f"federated.clients[{i}]: {exc}") from None


def _check_extras(cfg: Config) -> None:
    if cfg.log.wandb.mode != "off":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(f"log.wandb.mode: {cfg.log.wandb.mode} needs the wandb extra "
                              "(pip install 'distdqn[wandb]')") from None


def check(cfg: Config) -> tuple[Config, EnvInfo]:
    """Everything that can be checked before a run starts: the env (the user's code runs here
    once), each federated variant, the device, the network, extras, the cluster's address. Returns
    the run's config (its network resolved for the env) and the env's description."""
    info = env_info(cfg.env)
    _check_client_envs(cfg)
    check_devices(cfg)
    cfg = _check_network(cfg, info)
    from distdqn.local.build import check_replay_memory
    check_replay_memory(cfg, info)
    _check_extras(cfg)
    if cfg.topology != "single":  # fail on an unreachable cluster before anything is written
        from distdqn.runtime.cluster import check_reachable
        check_reachable(cfg.cluster.address, min(cfg.cluster.connect_timeout_s, 10.0))
    return cfg, info


def default_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.env.id.replace("/", "-").replace(":", "-")
    return Path("runs") / f"{name}-{cfg.topology}-s{cfg.seed}-{stamp}"


def _resumed(resume: Path, config: ConfigLike, env: EnvLike, overrides: Overrides, seed: int | None,
             address: str | None) -> tuple[Path, Config, EnvInfo, Checkpoint]:
    """The run directory of a resumed run, its config (the checkpoint's, or ``config``, with the
    rest applied), its env and its checkpoint: the newest that verifies, nothing of it unpickled
    yet (rundir.writing loads it once the run is locked). A run another process writes, or a
    config that does not match the checkpoint, is an error."""
    from distdqn import rundir
    run_dir = rundir.run_dir_of(resume)
    rundir.refuse_if_in_use(run_dir)   # before reading: the message is about the writer
    ckpt = open_checkpoint(resume)
    for skipped in ckpt.skipped:
        print(f"[distdqn] passed over: {skipped}; using {ckpt.path}", file=sys.stderr, flush=True)
    if "learner" not in ckpt.manifest.get("components", []):
        raise CheckpointError(f"{ckpt.path}: {BEST} holds the best evaluation's network only; resume from the run "
                              "directory (its latest checkpoint)")
    try:
        ckpt_cfg = config_from_dict(parse_yaml(ckpt.config_yaml, "checkpoint config.yaml"), "checkpoint config.yaml")
    except UserError as exc:
        raise CheckpointError(f"{resume}: the checkpoint's config.yaml is invalid: {exc}") from None
    cfg = make_config(ckpt_cfg if config is None else config, env=env, overrides=overrides, seed=seed,
                      address=address)
    cfg, info = check(cfg)
    check_compatible(ckpt_cfg, cfg, info, resume)
    return run_dir, cfg, info, ckpt


# ---- the functions ----

def train(config: ConfigLike = None, *, env: EnvLike = None, overrides: Overrides = None,
          seed: int | None = None, run_dir: str | Path | None = None, overwrite: bool = False,
          resume: str | Path | None = None, address: str | None = None, verbose: bool = True) -> Run:
    """Train a DQN and return the run. ``resume``: continue the run in that directory (its
    checkpoint's config unless ``config`` is given; a Python env factory must be handed again).
    ``address``: the Ray cluster to join (distributed topologies; default a local instance).
    ``verbose``: say where the run is written (stderr)."""
    from distdqn import rundir
    from distdqn.topologies import get_run

    ckpt = None
    if resume is not None:
        run_dir, cfg, info, ckpt = _resumed(Path(resume), config, env, overrides, seed, address)
    else:
        cfg = make_config(config, env=env, overrides=overrides, seed=seed, address=address)
        cfg, info = check(cfg)
        run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    try:
        with rundir.writing(run_dir, overwrite, ckpt, info) as resume_state:   # one writer; signals
            (run_dir / "config.yaml").write_text(cfg.to_yaml())
            if verbose:
                print(f"run directory: {run_dir}", file=sys.stderr, flush=True)
            result = get_run(cfg.topology)(cfg, run_dir, info, resume_state)
    except UserError:
        # refused before it started (a cluster too small, say): leave no half-made run behind
        if resume is None and run_dir.is_dir() and sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]:
            shutil.rmtree(run_dir)
        raise
    return Run(run_dir, cfg, result.summary)


def _config_with_env(path: Path, checkpoint: str | None, env: EnvLike) -> Config | None:
    """The checkpoint's config with ``env`` in it (None when no env is handed)."""
    if env is None:
        return None
    _, saved, _ = read_checkpoint(checkpoint_path(path, checkpoint), ())
    return make_config(saved.to_dict(), env=env)


def load(path: str | Path, checkpoint: str | None = None, *, env: EnvLike = None) -> Agent:
    """The trained agent of a run directory: ``checkpoint`` ``best`` (the best greedy evaluation's
    network), ``latest``, or a checkpoint's name; None: best if the run kept one, else latest.
    ``env``: the env factory the run was trained with, if it was a Python callable."""
    return load_agent(path, checkpoint, _config_with_env(Path(path), checkpoint, env))


def evaluate(path: str | Path, checkpoint: str | None = None, *, episodes: int = 10, seed: int = 12345,
             num_envs: int = 10, video_dir: str | Path | None = None, env: EnvLike = None) -> Evaluation:
    """Greedy returns of a run's agent (``load``); ``video_dir``: each episode recorded there as MP4."""
    return load(path, checkpoint, env=env).evaluate(episodes, seed, num_envs, video_dir)


def export(run: str | Path | Agent, output: str | Path | None = None, format: str = "onnx",
           checkpoint: str | None = None, *, env: EnvLike = None) -> Path:
    """The Q-network of a run (or of an ``Agent``) as one file that computes its Q-values without
    distdqn (``format`` torchscript or onnx; exporter.py); ``output`` defaults to
    ``RUN/export/<checkpoint>.pt`` or ``.onnx``."""
    from distdqn.exporter import FORMATS, SUFFIXES
    from distdqn.exporter import export as write
    if format not in FORMATS:
        raise UserError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    agent = run if isinstance(run, Agent) else load(run, checkpoint, env=env)
    if output is None:
        run_dir = agent.checkpoint.parent.parent
        output = run_dir / "export" / f"{agent.checkpoint.name}{SUFFIXES[format]}"
    return write(agent, output, format)
