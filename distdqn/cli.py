"""The ``distdqn`` command: train, evaluate, export, plot, compare, tune, presets; a thin layer over the
Python API (``distdqn/api.py``).

User errors (bad config, unknown env id, bad checkpoint, existing run directory) are printed as one
line, ``error: <what>``, with exit status 2 and no traceback; nothing is created or overwritten
before the input has been checked. A run stopped by SIGTERM or SIGINT finishes at its next safe
point (final checkpoint and summary) and exits 143 / 130 (``signals.py``); one run directory has
one writer (``rundir.py``).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from distdqn.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deep Q-Networks, trained fast on one machine and in parallel on Ray.")


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
    from distdqn import api, signals
    run = api.train(config, overrides=list(set_ or []), seed=seed, run_dir=run_dir, overwrite=overwrite,
                    resume=resume, address=address)
    s, cfg = run.summary, run.config
    solved = (f"solved in {s['time_to_solve_s']:.2f} s at {s['env_steps_to_solve']} env steps"
              if s["solved"] else "not solved")
    typer.echo(f"{cfg.env.id} [{cfg.topology}] {solved}; final eval {s['final_eval_return_mean']:.1f} "
               f"+- {s['final_eval_return_std']:.1f}; {s['env_steps']} env steps, "
               f"{s['learner_updates']} updates in {s['wall_s']:.1f} s{_privacy_spent(s)}")
    if signals.exit_code(s["stop_reason"]):   # stopped by SIGTERM / SIGINT: exit as the signal would
        raise typer.Exit(signals.exit_code(s["stop_reason"]))


def _privacy_spent(summary: dict) -> str:
    """The last line's privacy part: the (epsilon, delta) a DP run spent ("" without DP)."""
    if summary.get("dp_mode", "off") == "off":
        return ""
    epsilon = summary["dp_epsilon"]
    return (f"; DP ({summary['dp_mode']}): epsilon {'inf' if epsilon is None else f'{epsilon:.2f}'}, "
            f"delta {summary['dp_delta']:g}")


CHECKPOINT_HELP = ("best (the best greedy evaluation's network), latest, or a checkpoint's name; "
                   "default: best where the run kept one, else latest")


def _which(agent_checkpoint: Path, env_steps: int | None) -> str:
    steps = f", {env_steps} env steps" if env_steps is not None else ""
    return f"checkpoint {agent_checkpoint.name}{steps}"


@app.command()
def evaluate(
    path: Annotated[Path, typer.Argument(help="Run directory or checkpoint directory")],
    episodes: Annotated[int, typer.Option(min=1, help="Greedy episodes")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for the evaluation environments")] = 12345,
    num_envs: Annotated[int, typer.Option(min=1, help="Evaluation sub-environments")] = 10,
    checkpoint: Annotated[str | None, typer.Option(help=CHECKPOINT_HELP)] = None,
    video: Annotated[Path | None, typer.Option(
        help="Record each episode as an MP4 in this folder (pip install 'distdqn[video]')")] = None,
) -> None:
    """Greedy returns of a run's agent: prints mean and std (and the videos it recorded)."""
    from distdqn import api
    agent = api.load(path, checkpoint)
    result = agent.evaluate(episodes, seed, num_envs, video)
    typer.echo(f"{agent.config.env.id} ({_which(agent.checkpoint, agent.env_steps)}): mean {result.mean:.2f} "
               f"std {result.std:.2f} over {len(result.returns)} episodes")
    if video is not None:
        typer.echo(f"{len(result.videos)} videos in {video}")


@app.command()
def export(
    path: Annotated[Path, typer.Argument(help="Run directory or checkpoint directory")],
    format_: Annotated[str, typer.Option("--format", help="torchscript or onnx (pip install 'distdqn[onnx]')")] = "onnx",
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="File to write; default RUN/export/CHECKPOINT.pt or .onnx")] = None,
    checkpoint: Annotated[str | None, typer.Option(help=CHECKPOINT_HELP)] = None,
) -> None:
    """Write the agent's Q-network as one file that computes its Q-values without distdqn."""
    from distdqn import api
    agent = api.load(path, checkpoint)
    written = api.export(agent, output, format_)
    typer.echo(f"wrote {written} ({format_}, {_which(agent.checkpoint, agent.env_steps)}): obs "
               f"{list(agent.info.obs_shape)} {agent.info.obs_dtype} -> q_values [{agent.info.num_actions}]")


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
    from distdqn.api import check_devices
    for entry in plan.entries:
        check_devices(entry.cfg)
    for cfg in [e.cfg for e in plan.entries if e.cfg.topology != "single"]:
        # fail on an unreachable cluster before anything is written
        from distdqn.runtime.cluster import check_reachable
        check_reachable(address or cfg.cluster.address, min(cfg.cluster.connect_timeout_s, 10.0))
    runs = run_compare(plan)
    if not all(run.completed for run in runs):
        raise typer.Exit(1)


@app.command()
def tune(
    config: Annotated[str | None, typer.Argument(
        help="YAML config file or preset name to search around (not with --resume)")] = None,
    space: Annotated[Path | None, typer.Option(help="The search space: a YAML file (docs/tune.md)")] = None,
    out: Annotated[Path | None, typer.Option(help="The search's directory; default tunes/ENV-TIME")] = None,
    trials: Annotated[int | None, typer.Option(help="Trials (the space file's `trials`; default 16)")] = None,
    objective: Annotated[str | None, typer.Option(
        help="time_to_solve (default), env_steps_to_solve, or return (the best evaluation's)")] = None,
    budget_s: Annotated[float | None, typer.Option("--budget-s", help="A trial's wall-clock budget, seconds")] = None,
    search: Annotated[str | None, typer.Option(help="optuna (TPE, default) or random")] = None,
    max_concurrent: Annotated[int | None, typer.Option(
        "--max-concurrent", help="Trials at a time (default 1: timings undisturbed)")] = None,
    seed: Annotated[int | None, typer.Option(help="The search's seed, and every trial's (default 0)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override for every trial: key.path=value")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address: trials placed on the cluster")] = None,
    resume: Annotated[Path | None, typer.Option(help="Go on with the search in this directory")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing search directory")] = False,
    verify_top: Annotated[int, typer.Option("--verify-top", min=0, help="Configs verified after the search")] = 3,
    verify_seeds: Annotated[int, typer.Option("--verify-seeds", min=1, help="Fresh seeds per verified config")] = 3,
    first_verify_seed: Annotated[int, typer.Option("--first-verify-seed", help="The first fresh seed")] = 1000,
) -> None:
    """Search hyperparameters on Ray Tune (ASHA stops bad trials early), verify the best configs
    on fresh seeds, and write the best as a preset (OUT/best.yaml) with a report."""
    import shlex
    import time

    from distdqn.tuning import plan_search, read_request, run_search
    from distdqn.tuning.space import SpaceError

    command = shlex.join(["distdqn", *sys.argv[1:]])
    options = {"trials": trials, "objective": objective, "budget_s": budget_s, "search": search,
               "max_concurrent": max_concurrent, "seed": seed}
    if resume is not None:
        if config is not None or space is not None or set_:
            raise SpaceError("--resume: give only the search's directory (its config and space are in it)")
        request = read_request(resume)
        options = {**request["options"], **{k: v for k, v in options.items() if v is not None}}
        plan = plan_search(request["config"], resume / "space.yaml", resume, overrides=request["overrides"],
                           options=options, address=address or request.get("address"), command=request["command"],
                           resume=True, verify_top=request["verify_top"], verify_seeds=request["verify_seeds"],
                           first_verify_seed=request["first_verify_seed"])
    else:
        if config is None or space is None:
            raise SpaceError("tune: give a CONFIG and --space SPACE.yaml (or --resume DIR)")
        if out is None:
            from distdqn.config import load_config
            env_id = load_config(config, list(set_ or [])).env.id
            out = Path("tunes") / f"{env_id.replace('/', '-').replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
        plan = plan_search(config, space, out, overrides=list(set_ or []), options=options, address=address,
                           command=command, overwrite=overwrite, verify_top=verify_top,
                           verify_seeds=verify_seeds, first_verify_seed=first_verify_seed)
        request = {"config": config, "overrides": list(set_ or []), "options": {k: v for k, v in options.items()
                                                                                if v is not None},
                   "address": address, "command": command, "verify_top": verify_top,
                   "verify_seeds": verify_seeds, "first_verify_seed": first_verify_seed}
    if plan.cfg.topology != "single":   # fail on an unreachable cluster before anything is written
        from distdqn.runtime.cluster import check_reachable
        check_reachable(address, min(plan.cfg.cluster.connect_timeout_s, 10.0))
    best = run_search(plan, request, resume=resume is not None)
    typer.echo(f"best config: {best}")


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
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: disk full ({exc.strerror}: {exc.filename or 'a run file'}); the last checkpoint is intact",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
