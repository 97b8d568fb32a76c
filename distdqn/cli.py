"""The ``distdqn`` command: train, evaluate, plot, compare, presets.

User errors (bad config, unknown env id, bad checkpoint, existing run directory) are printed as one
line, ``error: <what>``, with exit status 2 and no traceback; nothing is created or overwritten
before the input has been checked.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from distdqn.errors import CheckpointError, ConfigError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deep Q-Networks, trained fast on one machine and in parallel on Ray.")

# Fields that must agree between a checkpoint and the config it is resumed or evaluated with.
_MUST_MATCH = ("topology", "env.id", "env.kwargs", "env.num_envs", "network.kind",
               "network.hidden_sizes", "network.dueling", "network.atoms", "network.v_min",
               "network.v_max", "replay.capacity", "replay.prioritized",
               "replay.storage", "workers.num_workers")


def _field(cfg_dict: dict, path: str):
    node = cfg_dict
    for part in path.split("."):
        node = node[part]
    return node


def check_compatible(checkpoint_cfg, cfg, where: Path) -> None:
    a, b = checkpoint_cfg.to_dict(), cfg.to_dict()
    for path in _MUST_MATCH:
        if _field(a, path) != _field(b, path):
            raise CheckpointError(f"{where}: checkpoint does not match the config: {path} is "
                                  f"{_field(a, path)!r} in the checkpoint, {_field(b, path)!r} now")


def _check_devices(cfg) -> None:
    from distdqn.errors import ConfigError
    if cfg.learner.device == "cuda" and cfg.topology == "single":  # elsewhere the GPU may be on another node
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("learner.device: cuda was asked for but no CUDA device is available "
                              "(use auto or cpu)")


def _check_network(cfg, info) -> None:
    """The network can take the environment's observations (checked before any process starts)."""
    from distdqn.local.build import build_network
    try:
        build_network(cfg, info)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_client_envs(cfg) -> None:
    """Each federated client's environment variant can be made (checked here, before anything is
    written, rather than when a client process starts on the cluster)."""
    from distdqn.envs import env_info
    from distdqn.errors import EnvironmentSpecError
    if cfg.topology != "federated":
        return
    for i in range(len(cfg.federated.clients)):
        try:
            env_info(cfg.for_client(i).env)
        except EnvironmentSpecError as exc:
            raise EnvironmentSpecError(f"federated.clients[{i}]: {exc}") from None


def _default_run_dir(cfg) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.env.id.replace("/", "-")
    return Path("runs") / f"{name}-{cfg.topology}-s{cfg.seed}-{stamp}"


def _load_checkpoint_config(path: Path):
    from distdqn.checkpoint import load_checkpoint
    from distdqn.config import config_from_dict, parse_yaml
    components, config_yaml, manifest = load_checkpoint(path)
    try:
        ckpt_cfg = config_from_dict(parse_yaml(config_yaml, "checkpoint config.yaml"), "checkpoint config.yaml")
    except UserError as exc:
        raise CheckpointError(f"{path}: the checkpoint's config.yaml is invalid: {exc}") from None
    return components, ckpt_cfg, manifest


def _resumed_config(resume: Path, config: Path | None, overrides: list[str], seed: int | None):
    """The config of a resumed run (the checkpoint's, or ``config``, with the overrides) and the
    checkpoint's components; a config that does not match the checkpoint is an error."""
    from distdqn.config import apply_override, config_from_dict, load_config
    components, ckpt_cfg, _ = _load_checkpoint_config(resume)
    if config is None:
        raw = ckpt_cfg.to_dict()
        for assignment in overrides:
            apply_override(raw, assignment)
        if seed is not None:
            raw["seed"] = seed
        cfg = config_from_dict(raw)
    else:
        cfg = load_config(config, overrides, seed)
    check_compatible(ckpt_cfg, cfg, resume)
    return cfg, components


@app.command()
def train(
    config: Annotated[str | None, typer.Argument(
        help="YAML config file or preset name (`distdqn presets`); default: the cartpole preset")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides the config's)")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Where to write the run")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key.path=value")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory")] = False,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (distributed topologies)")] = None,
) -> None:
    """Train a DQN. With no CONFIG, trains CartPole-v1 on the default topology."""
    from distdqn.config import load_config
    from distdqn.envs import env_info
    from distdqn.topologies import get_run

    overrides = list(set_ or [])
    if address is not None:   # an override like any other, applied before the config is validated
        overrides.append(f"cluster.address={json.dumps(address)}")
    resume_state = None
    if resume is not None:
        cfg, resume_state = _resumed_config(resume, config, overrides, seed)
        run_dir = resume if (resume / "checkpoints").is_dir() else resume.parent.parent
    else:
        cfg = load_config(config, overrides, seed)
    info = env_info(cfg.env)
    _check_client_envs(cfg)
    _check_devices(cfg)
    _check_network(cfg, info)
    if cfg.topology != "single":  # fail on an unreachable cluster before anything is written
        from distdqn.runtime.cluster import check_reachable
        check_reachable(cfg.cluster.address, min(cfg.cluster.connect_timeout_s, 10.0))

    if resume is None:
        run_dir = run_dir or _default_run_dir(cfg)
        if run_dir.exists() and any(run_dir.iterdir()):
            if not overwrite:
                raise UserError(f"--run-dir: {run_dir} already exists; pass --overwrite to replace it "
                                f"or --resume {run_dir} to continue it")
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    typer.echo(f"run directory: {run_dir}", err=True)
    try:
        result = get_run(cfg.topology)(cfg, run_dir, info, resume_state)
    except UserError:
        # refused before it started (a cluster too small, say): leave no half-made run behind
        if resume is None and sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]:
            shutil.rmtree(run_dir)
        raise
    s = result.summary
    solved = (f"solved in {s['time_to_solve_s']:.2f} s at {s['env_steps_to_solve']} env steps"
              if s["solved"] else "not solved")
    typer.echo(f"{cfg.env.id} [{cfg.topology}] {solved}; final eval {s['final_eval_return_mean']:.1f} "
               f"+- {s['final_eval_return_std']:.1f}; {s['env_steps']} env steps, "
               f"{s['learner_updates']} updates in {s['wall_s']:.1f} s{_privacy_spent(s)}")


def _privacy_spent(summary: dict) -> str:
    """The last line's privacy part: the (epsilon, delta) a DP run spent ("" without DP)."""
    if summary.get("dp_mode", "off") == "off":
        return ""
    epsilon = summary["dp_epsilon"]
    return (f"; DP ({summary['dp_mode']}): epsilon {'inf' if epsilon is None else f'{epsilon:.2f}'}, "
            f"delta {summary['dp_delta']:g}")


@app.command()
def evaluate(
    path: Annotated[Path, typer.Argument(help="Run directory or checkpoint directory")],
    episodes: Annotated[int, typer.Option(min=1, help="Greedy episodes")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for the evaluation environments")] = 12345,
    num_envs: Annotated[int, typer.Option(min=1, help="Evaluation sub-environments")] = 10,
) -> None:
    """Greedy returns of a checkpoint: prints mean and std."""
    import numpy as np
    import torch

    from distdqn.core.actor import evaluate as run_evaluation
    from distdqn.envs import env_info, make_vector_env
    from distdqn.local.build import build_network, build_policy

    components, cfg, _ = _load_checkpoint_config(path)
    info = env_info(cfg.env)
    network = build_network(cfg, info)
    try:
        network.load_state_dict(components["learner"]["online"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: checkpoint weights do not match its config "
                              f"({str(exc).splitlines()[0]})") from None
    weights = {k: v.detach().cpu().numpy() for k, v in network.state_dict().items()}
    torch.set_num_threads(1)
    env = make_vector_env(cfg.env, min(num_envs, episodes), evaluation=True)
    returns = run_evaluation(build_policy(cfg, info, weights), env, episodes, 0.0, seed)
    env.close()
    typer.echo(f"{cfg.env.id}: mean {np.mean(returns):.2f} std {np.std(returns):.2f} over {len(returns)} episodes")


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG file to write")] = Path("returns.png"),
) -> None:
    """Plot evaluation and training return against env steps and against wall-clock time."""
    from distdqn.plotting import plot_runs
    plot_runs(run_dirs, output)
    typer.echo(f"wrote {output}")


@app.command()
def compare(
    configs: Annotated[list[str], typer.Argument(
        help="YAML config files or preset names, of the same environment")],
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per config")] = 5,
    first_seed: Annotated[int, typer.Option("--first-seed", min=0, help="Seeds are first-seed, +1, ...")] = 0,
    out: Annotated[Path | None, typer.Option(help="Report directory; default reports/compare-ENV-TIME")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override for every config: key.path=value")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing report directory")] = False,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (distributed topologies)")] = None,
    sweep: Annotated[str | None, typer.Option(
        help="Run every config at each value of one key, e.g. workers.num_workers=1,2,4,8")] = None,
) -> None:
    """Train every config with each seed, one run at a time, and report which is faster to solve;
    with --sweep, also throughput and time to solve against the swept value (a table and a plot)."""
    import shlex

    from distdqn.compare import compare as run_compare
    from distdqn.compare import plan_comparison

    command = shlex.join(["distdqn", *sys.argv[1:]])
    plan = plan_comparison(configs, seeds, first_seed, list(set_ or []), address, out, overwrite, command, sweep)
    for entry in plan.entries:
        _check_devices(entry.cfg)
    for cfg in [e.cfg for e in plan.entries if e.cfg.topology != "single"]:
        # fail on an unreachable cluster before anything is written
        from distdqn.runtime.cluster import check_reachable
        check_reachable(address or cfg.cluster.address, min(cfg.cluster.connect_timeout_s, 10.0))
    runs = run_compare(plan)
    if not all(run.completed for run in runs):
        raise typer.Exit(1)


@app.command()
def presets() -> None:
    """List the presets that come with distdqn: `distdqn train NAME` trains one."""
    from distdqn.config import preset_description, preset_names
    names = preset_names()
    width = max(len(name) for name in names)
    for name in names:
        typer.echo(f"{name:<{width}}  {preset_description(name)}")


def main() -> None:
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
