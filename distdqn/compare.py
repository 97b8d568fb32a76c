"""`distdqn compare`: which topology for my task?

Each (config, seed) pair is trained by its own ``distdqn train`` subprocess, one at a time so that
no run's timings are disturbed by another's, interleaved by seed (seed 0 of every config, then
seed 1, ...) so that a machine that slows down over time does not favour one config. Then::

    OUT/
      report.md                  one row per config: median [min-max] over seeds, and how to reproduce
      results.json               every run's figures and the per-config aggregates
      return_vs_env_steps.png    evaluation return per config: faint line per seed, bold median
      return_vs_wall_s.png
      sweep.png                  with --sweep KEY=V1,V2,...: throughput and time to solve against
                                 the swept value, one line per config (how many workers?)
      runs/<label>-s<seed>/      each run's directory, as `distdqn train` writes it
      runs/<label>-s<seed>.log   its stdout and stderr

A config's label is its ``topology``, or its name when two configs share a topology (a preset's
name, or a file's stem). A run that fails is recorded (with its last ``error:`` line) and the
comparison goes on.

Reading order: plan and validate (nothing written), run, aggregate (pure), format (pure), plot.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distdqn.config import Config, load_config
from distdqn.errors import UserError

PLOTS = ("return_vs_env_steps.png", "return_vs_wall_s.png")


# ============================================================================================
# Plan: load and check every config, decide labels and directories. Nothing is written here.

@dataclass
class ConfigEntry:
    config: str
    """As given: a YAML file's path or a preset's name."""
    label: str
    cfg: Config
    overrides: list[str] = field(default_factory=list)
    """This entry's own ``--set``s (the swept key's value)."""
    base: str = ""
    """The config's label before the sweep (the label, without a sweep)."""
    sweep_value: str | None = None


@dataclass(frozen=True)
class Sweep:
    """``--sweep KEY=V1,V2,...``: every config is run at each value of one key."""

    key: str
    values: list[str]

    @classmethod
    def parse(cls, text: str) -> Sweep:
        key, _, values = text.partition("=")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not key.strip() or not items:
            raise UserError(f"--sweep: expected KEY=V1,V2,... such as workers.num_workers=1,2,4 (got {text!r})")
        return cls(key.strip(), items)

    @property
    def leaf(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    def numeric(self) -> list[float] | None:
        try:
            return [float(v) for v in self.values]
        except ValueError:
            return None


@dataclass
class Plan:
    entries: list[ConfigEntry]
    seeds: list[int]
    out_dir: Path
    overwrite: bool
    overrides: list[str]
    address: str | None
    command: str
    sweep: Sweep | None = None

    @property
    def env_id(self) -> str:
        return self.entries[0].cfg.env.id

    @property
    def total_runs(self) -> int:
        return len(self.entries) * len(self.seeds)

    def run_name(self, entry: ConfigEntry, seed: int) -> str:
        return f"{entry.label.replace(' ', '_')}-s{seed}"


def config_labels(configs: list[str], topologies: list[str]) -> list[str]:
    """The topology, or the config's name where two configs share a topology: a file's stem, or a
    preset's name (which is its file's stem); a name still taken twice (the same stem in two
    folders) gets -1, -2, ... in the order given."""
    shared = Counter(topologies)
    labels = [t if shared[t] == 1 else Path(c).stem for c, t in zip(configs, topologies)]
    repeated = Counter(labels)
    taken = {label for label in labels if repeated[label] == 1}
    unique = []
    for label in labels:
        if repeated[label] > 1:
            n = 1
            while f"{label}-{n}" in taken:
                n += 1
            label = f"{label}-{n}"
            taken.add(label)
        unique.append(label)
    return unique


def plan_comparison(configs: list[str], seeds: int, first_seed: int, overrides: list[str],
                    address: str | None, out_dir: Path | None, overwrite: bool,
                    command: str, sweep: str | None = None) -> Plan:
    """Load every config with the overrides (at every value of the ``sweep``), check they pose the
    same task and that the output directory may be written; raise UserError otherwise."""
    from distdqn.envs import env_info

    if not configs:
        raise UserError("compare: give at least one config")
    cfgs = [load_config(config, overrides) for config in configs]
    for config, cfg in zip(configs[1:], cfgs[1:]):
        if cfg.env.id != cfgs[0].env.id:
            raise UserError(f"compare: the configs must train the same environment: {configs[0]} has "
                            f"env.id {cfgs[0].env.id}, {config} has env.id {cfg.env.id}")
    for cfg in cfgs:
        env_info(cfg.env)   # an unknown id or an unusable env fails here, not in every run
    labels = config_labels(configs, [cfg.topology for cfg in cfgs])
    if out_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = Path("reports") / f"compare-{cfgs[0].env.id.replace('/', '-')}-{stamp}"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out: {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"--out: {out_dir} already exists and is not empty; pass --overwrite to replace it")
    entries = [ConfigEntry(c, label, cfg, base=label) for c, label, cfg in zip(configs, labels, cfgs)]
    swept = Sweep.parse(sweep) if sweep is not None else None
    if swept is not None:   # each config at each value; a value the config refuses fails here
        entries = [ConfigEntry(e.config, f"{e.label} {swept.leaf}={v}",
                               load_config(e.config, [*overrides, f"{swept.key}={v}"]),
                               [f"{swept.key}={v}"], e.label, v)
                   for e in entries for v in swept.values]
    return Plan(entries, list(range(first_seed, first_seed + seeds)), out_dir, overwrite,
                list(overrides), address, command, swept)


# ============================================================================================
# Run: one `distdqn train` subprocess per (config, seed), one at a time.

@dataclass
class RunOutcome:
    """One (config, seed) run: how it ended and, if it finished, its summary.json."""

    label: str
    topology: str
    config: str
    seed: int
    run_dir: str
    returncode: int
    error: str | None = None
    summary: dict[str, Any] | None = None

    @property
    def completed(self) -> bool:
        return self.error is None and self.summary is not None

    @property
    def env_steps_per_s(self) -> float | None:
        return self._rate("env_steps")

    @property
    def updates_per_s(self) -> float | None:
        return self._rate("learner_updates")

    def _rate(self, key: str) -> float | None:
        if not self.completed or not self.summary["wall_s"]:
            return None
        return self.summary[key] / self.summary["wall_s"]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "env_steps_per_s": self.env_steps_per_s,
                "updates_per_s": self.updates_per_s}


def train_argv(plan: Plan, entry: ConfigEntry, seed: int, run_dir: Path) -> list[str]:
    argv = [sys.executable, "-m", "distdqn.cli", "train", entry.config, "--seed", str(seed),
            "--run-dir", str(run_dir), "--set", "log.progress=false"]
    for assignment in [*plan.overrides, *entry.overrides]:
        argv += ["--set", assignment]
    if plan.address is not None:
        argv += ["--address", plan.address]
    return argv


def failure_line(stderr: str, returncode: int) -> str:
    """What to say about a failed run: its last ``error:`` line, else its last stderr line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    if lines:
        return lines[-1]
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"


def run_one(argv: list[str], run_dir: Path, log_path: Path) -> tuple[int, str | None, dict | None]:
    """Run ``argv``; keep its output in ``log_path``; return (exit status, error, summary)."""
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, env=dict(os.environ))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"$ {shlex.join(argv)}\n# exit status {proc.returncode}\n"
                        f"# stdout\n{proc.stdout}\n# stderr\n{proc.stderr}")
    if proc.returncode != 0:
        return proc.returncode, failure_line(proc.stderr, proc.returncode), None
    try:
        return 0, None, json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        return 0, f"no readable summary.json in {run_dir} ({exc})", None


def describe(outcome: RunOutcome) -> str:
    if not outcome.completed:
        return f"FAILED (exit {outcome.returncode}): {outcome.error}"
    s = outcome.summary
    solved = (f"solved in {s['time_to_solve_s']:.2f} s at {s['env_steps_to_solve']:,} env steps"
              if s["solved"] else "not solved")
    return (f"{solved}; final eval {s['final_eval_return_mean']:.1f}; "
            f"{outcome.env_steps_per_s:,.0f} env steps/s; {s['wall_s']:.1f} s")


def run_comparison(plan: Plan) -> tuple[list[RunOutcome], bool]:
    """Every (config, seed) run, seed by seed, with one progress line each on stderr. Returns the
    outcomes and whether Ctrl-C stopped it early (the run it was in is then left out)."""
    if plan.out_dir.exists() and plan.overwrite:
        shutil.rmtree(plan.out_dir)
    (plan.out_dir / "runs").mkdir(parents=True, exist_ok=True)
    print(f"compare: {len(plan.entries)} configs x {len(plan.seeds)} seeds = {plan.total_runs} runs, "
          f"one at a time, into {plan.out_dir}", file=sys.stderr, flush=True)
    outcomes: list[RunOutcome] = []
    try:
        for seed in plan.seeds:
            for entry in plan.entries:
                run_dir = plan.out_dir / "runs" / plan.run_name(entry, seed)
                print(f"[{len(outcomes) + 1}/{plan.total_runs}] {entry.label} seed {seed}: ", end="",
                      file=sys.stderr, flush=True)
                returncode, error, summary = run_one(train_argv(plan, entry, seed, run_dir), run_dir,
                                                     run_dir.with_name(run_dir.name + ".log"))
                outcome = RunOutcome(entry.label, entry.cfg.topology, entry.config, seed,
                                     str(run_dir), returncode, error, summary)
                print(describe(outcome), file=sys.stderr, flush=True)
                outcomes.append(outcome)
    except KeyboardInterrupt:
        print(f"interrupted; the report covers the {len(outcomes)} finished run(s)",
              file=sys.stderr, flush=True)
        return outcomes, True
    return outcomes, False


# ============================================================================================
# Aggregate (pure): per label, median [min-max] over seeds.

@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        values = [float(v) for v in values]
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass
class LabelAggregate:
    label: str
    topology: str
    runs: int                                   # runs attempted
    completed: int                              # runs that finished and wrote summary.json
    solved: int
    time_to_solve_s: Spread | None              # over the solving runs only
    env_steps_to_solve: Spread | None           # over the solving runs only
    final_eval_return: Spread | None            # over the completed runs
    env_steps_per_s: Spread | None
    updates_per_s: Spread | None
    throughput_vs_single: float | None = None   # median env steps/s / the reference's
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.runs - self.completed


def reference_label(runs: list[RunOutcome]) -> str | None:
    """The label that throughput is measured against: the first config of topology ``single``."""
    return next((r.label for r in runs if r.topology == "single"), None)


def aggregate(runs: list[RunOutcome]) -> dict[str, LabelAggregate]:
    """Per label (in the order first seen): solved count, solve figures over the solving runs,
    final return and rates over the completed runs, and throughput relative to ``single``."""
    by_label: dict[str, list[RunOutcome]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    aggregates = {}
    for label, group in by_label.items():
        done = [r for r in group if r.completed]
        solving = [r for r in done if r.summary["solved"]]
        aggregates[label] = LabelAggregate(
            label=label, topology=group[0].topology, runs=len(group), completed=len(done),
            solved=len(solving),
            time_to_solve_s=Spread.of([r.summary["time_to_solve_s"] for r in solving]),
            env_steps_to_solve=Spread.of([r.summary["env_steps_to_solve"] for r in solving]),
            final_eval_return=Spread.of([r.summary["final_eval_return_mean"] for r in done]),
            env_steps_per_s=Spread.of([r.env_steps_per_s for r in done if r.env_steps_per_s is not None]),
            updates_per_s=Spread.of([r.updates_per_s for r in done if r.updates_per_s is not None]),
            errors=[f"seed {r.seed}: {r.error}" for r in group if not r.completed])
    reference = reference_label(runs)
    base = aggregates[reference].env_steps_per_s if reference is not None else None
    if base is not None and base.median > 0:
        for agg in aggregates.values():
            if agg.env_steps_per_s is not None:
                agg.throughput_vs_single = agg.env_steps_per_s.median / base.median
    return aggregates


# ============================================================================================
# Format (pure): the Markdown table and report.

def spread_cell(spread: Spread | None, fmt: str) -> str:
    if spread is None:
        return "–"
    return f"{spread.median:{fmt}} [{spread.min:{fmt}}–{spread.max:{fmt}}]"


def markdown_table(aggregates: dict[str, LabelAggregate]) -> str:
    """One row per label; each figure ``median [min–max]`` over seeds."""
    with_ratio = any(a.throughput_vs_single is not None for a in aggregates.values())
    header = ["config", "runs solved", "time to solve (s)", "env steps to solve", "final eval return",
              "env steps/s", "learner updates/s"] + (["throughput vs single"] if with_ratio else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for agg in aggregates.values():
        solved = f"{agg.solved}/{agg.runs}" + (f" ({agg.failed} failed)" if agg.failed else "")
        row = [agg.label, solved, spread_cell(agg.time_to_solve_s, ".2f"),
               spread_cell(agg.env_steps_to_solve, ",.0f"), spread_cell(agg.final_eval_return, ".1f"),
               spread_cell(agg.env_steps_per_s, ",.0f"), spread_cell(agg.updates_per_s, ",.0f")]
        if with_ratio:
            ratio = agg.throughput_vs_single
            row.append("–" if ratio is None else f"{ratio:.2f}x")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def runs_table(runs: list[RunOutcome]) -> str:
    header = ("| config | seed | solved | time to solve (s) | env steps to solve | final eval return "
              "| env steps | wall s | env steps/s | learner updates/s |")
    lines = [header, "|" + "---|" * 10]
    for r in runs:
        if not r.completed:
            error = (r.error or "").replace("|", "\\|")
            lines.append(f"| {r.label} | {r.seed} | failed: {error} |" + " |" * 7)
            continue
        s = r.summary
        solve_s = "–" if s["time_to_solve_s"] is None else f"{s['time_to_solve_s']:.2f}"
        solve_steps = "–" if s["env_steps_to_solve"] is None else f"{s['env_steps_to_solve']:,}"
        lines.append(f"| {r.label} | {r.seed} | {'yes' if s['solved'] else 'no'} | {solve_s} | "
                     f"{solve_steps} | {s['final_eval_return_mean']:.1f} | {s['env_steps']:,} | "
                     f"{s['wall_s']:.1f} | {r.env_steps_per_s:,.0f} | {r.updates_per_s:,.0f} |")
    return "\n".join(lines)


def sweep_table(plan: Plan, aggregates: dict[str, LabelAggregate]) -> str:
    """Per config, a row per swept value: env steps/s, its speed-up over the first value and (for
    numbers) the parallel efficiency, speed-up / (value / first value); solved, time to solve."""
    sweep, numeric = plan.sweep, plan.sweep.numeric()
    header = ["config", sweep.key, "env steps/s", f"speed-up vs {sweep.values[0]}"]
    header += ["parallel efficiency"] if numeric else []
    header += ["runs solved", "time to solve (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for base in dict.fromkeys(e.base for e in plan.entries):
        group = [e for e in plan.entries if e.base == base]
        first = aggregates.get(group[0].label)
        for k, entry in enumerate(group):
            agg = aggregates.get(entry.label)
            if agg is None:
                continue
            speedup = (agg.env_steps_per_s.median / first.env_steps_per_s.median
                       if agg.env_steps_per_s and first and first.env_steps_per_s else None)
            row = [base, entry.sweep_value, spread_cell(agg.env_steps_per_s, ",.0f"),
                   "–" if speedup is None else f"{speedup:.2f}x"]
            if numeric:
                scale = numeric[k] / numeric[0] if numeric[0] else None
                row.append("–" if speedup is None or not scale else f"{speedup / scale:.0%}")
            row += [f"{agg.solved}/{agg.runs}", spread_cell(agg.time_to_solve_s, ".2f")]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def thresholds(runs: list[RunOutcome]) -> list[float]:
    return sorted({float(r.summary["solve_threshold"]) for r in runs if r.completed})


def report_markdown(plan: Plan, runs: list[RunOutcome], aggregates: dict[str, LabelAggregate],
                    provenance: dict[str, str]) -> str:
    seeds = plan.seeds
    seed_text = (f"{len(seeds)} seeds ({seeds[0]}–{seeds[-1]})" if len(seeds) > 1
                 else f"1 seed ({seeds[0]})")
    reference = reference_label(runs)
    finite = [t for t in thresholds(runs) if math.isfinite(t)]
    solve = (f"Solved: the first evaluation of at least 10 greedy episodes with a mean return >= "
             f"{', '.join(f'{t:g}' for t in finite)}." if finite else
             "No solve threshold: the environment has none and `eval.solve_threshold` is not set.")
    intro = (
        f"{seed_text} per config, run one at a time, seed by seed. Each figure is `median [min–max]` "
        f"over seeds; time and env steps to solve are over the solving seeds only, the rest over "
        f"the runs that finished. Env steps/s and learner updates/s are a run's totals divided by "
        f"its wall-clock time as its summary.json gives it (environment creation, Ray start-up and "
        f"evaluations included; Python's start-up not). {solve}")
    parts = [f"# distdqn compare: {plan.env_id}", "", intro, "", markdown_table(aggregates), ""]
    if plan.sweep is not None:
        parts += [f"## Against `{plan.sweep.key}`", "", sweep_table(plan, aggregates), "",
                  "![throughput and time to solve against the swept value](sweep.png)", ""]
    if len(runs) < plan.total_runs:
        parts += [f"**Interrupted** after {len(runs)} of {plan.total_runs} runs: the figures cover them only.",
                  ""]
    if reference is not None and reference != "single":
        parts += [f"Throughput vs single is relative to `{reference}`.", ""]
    if len(thresholds(runs)) > 1:
        warning = ("**The configs solve at different thresholds** (`eval.solve_threshold`): "
                   "their solve figures are not comparable.")
        parts += [warning, ""]
    failures = [f"- {a.label}, {e}" for a in aggregates.values() for e in a.errors]
    if failures:
        parts += ["Failed runs (their output is in `runs/<config>-s<seed>.log`):", "", *failures, ""]
    parts += ["| config | file or preset | topology | env steps budget |", "|---|---|---|---|"]
    parts += [f"| {e.label} | `{e.config}` | {e.cfg.topology} | {e.cfg.train.total_env_steps:,} |"
              for e in plan.entries]
    parts += ["", "![return vs env steps](return_vs_env_steps.png)",
              "![return vs wall-clock seconds](return_vs_wall_s.png)", "",
              "## Runs", "", runs_table(runs), "",
              "## Reproduce", "", f"    {plan.command}", "",
              f"- commit: {provenance['commit']}", f"- machine: {provenance['machine']}",
              f"- software: {provenance['software']}", f"- finished: {provenance['date']}", ""]
    return "\n".join(parts)


def results_json(plan: Plan, runs: list[RunOutcome], aggregates: dict[str, LabelAggregate],
                 provenance: dict[str, str]) -> dict[str, Any]:
    return {
        "env_id": plan.env_id,
        "command": plan.command,
        **provenance,
        "seeds": plan.seeds,
        "overrides": plan.overrides,
        "configs": [{"label": e.label, "path": e.config, "topology": e.cfg.topology,
                     "total_env_steps": e.cfg.train.total_env_steps, "sweep_value": e.sweep_value}
                    for e in plan.entries],
        "sweep": asdict(plan.sweep) if plan.sweep is not None else None,
        "reference_label": reference_label(runs),
        "runs": [r.to_dict() for r in runs],
        "aggregates": {label: {**asdict(a), "failed": a.failed} for label, a in aggregates.items()},
    }


# ============================================================================================
# Provenance: commit and machine.

def git_commit(repo: Path | None = None) -> str:
    """``git rev-parse --short HEAD`` of the source tree, "+dirty" with uncommitted changes;
    "unknown" when distdqn is not running from a git checkout."""
    repo = repo or Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        return "unknown"
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              check=False, capture_output=True, text=True, timeout=30)
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                                check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_description() -> str:
    parts = [platform.platform(), f"{os.cpu_count()} CPUs"]
    model = cpu_model()
    if model:
        parts.append(model)
    return ", ".join(parts)


def software_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    parts = [f"Python {platform.python_version()}"]
    for package in ("torch", "gymnasium", "ray"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


# ============================================================================================
# Plot: evaluation return per label, a faint line per seed and the median across seeds.

def eval_curve(run_dir: Path) -> tuple[list[float], list[float], list[float]]:
    """(env steps, wall seconds, eval return) at each evaluation of a run, from metrics.jsonl
    (each evaluation once, although later rows repeat the latest one)."""
    from distdqn.metrics import read_metrics
    steps, walls, returns, seen = [], [], [], set()
    for row in read_metrics(run_dir):
        if row.get("eval_return_mean") is None:
            continue
        at = row.get("eval_env_steps", row["env_steps"])
        if at in seen:
            continue
        seen.add(at)
        steps.append(float(at))
        walls.append(float(row["wall_s"]))
        returns.append(float(row["eval_return_mean"]))
    return steps, walls, returns


def median_curve(curves: list[tuple[list[float], list[float]]], points: int = 200):
    """Median across curves on a common grid, from the latest first x to the latest last x; each
    curve is linearly interpolated and holds its last value after it ends (a run that stopped)."""
    import numpy as np
    curves = [(xs, ys) for xs, ys in curves if xs]
    if not curves:
        return np.array([]), np.array([])
    start = max(xs[0] for xs, _ in curves)
    end = max(xs[-1] for xs, _ in curves)
    grid = np.linspace(start, end, points) if end > start else np.array([start])
    values = np.stack([np.interp(grid, xs, ys) for xs, ys in curves])
    return grid, np.median(values, axis=0)


def plot_returns(plan: Plan, runs: list[RunOutcome]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[tuple[list[float], list[float], list[float]]]] = {}
    for run in runs:
        if run.completed:
            curves.setdefault(run.label, []).append(eval_curve(Path(run.run_dir)))
    for name, axis, xlabel in ((PLOTS[0], 0, "environment steps"), (PLOTS[1], 1, "wall-clock seconds")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, entry in enumerate(plan.entries):
            seeds = curves.get(entry.label, [])
            color = f"C{i % 10}"
            for curve in seeds:
                ax.plot(curve[axis], curve[2], color=color, alpha=0.25, linewidth=1)
            grid, median = median_curve([(curve[axis], curve[2]) for curve in seeds])
            if len(grid):
                ax.plot(grid, median, color=color, linewidth=2.5,
                        label=f"{entry.label} (median of {len(seeds)} seeds)")
        for threshold in thresholds(runs):
            if math.isfinite(threshold):
                ax.axhline(threshold, color="black", linestyle="--", linewidth=1,
                           label=f"solve threshold {threshold:g}")
        ax.set_title(f"{plan.env_id}: greedy evaluation return (faint: each seed, bold: median)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean evaluation return")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
        fig.tight_layout()
        fig.savefig(plan.out_dir / name, dpi=110)
        plt.close(fig)


def plot_sweep(plan: Plan, aggregates: dict[str, LabelAggregate]) -> None:
    """sweep.png: env steps/s and time to solve (median, min-max bars) against the swept value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = plan.sweep.numeric()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, base in enumerate(dict.fromkeys(e.base for e in plan.entries)):
        group = [(k, e) for k, e in enumerate(plan.entries) if e.base == base]
        for ax, key in ((axes[0], "env_steps_per_s"), (axes[1], "time_to_solve_s")):
            points = [(numeric[k % len(numeric)] if numeric else e.sweep_value, getattr(aggregates[e.label], key))
                      for k, e in group if e.label in aggregates and getattr(aggregates[e.label], key)]
            if not points:
                continue
            xs, spreads = zip(*points)
            ys = [s.median for s in spreads]
            errors = [[y - s.min for y, s in zip(ys, spreads)], [s.max - y for y, s in zip(ys, spreads)]]
            ax.errorbar(xs, ys, yerr=errors, color=f"C{i % 10}", marker="o", capsize=3, label=base)
    axes[0].set_ylabel("env steps/s (median, min-max over seeds)")
    axes[1].set_ylabel("time to solve, s (solving seeds)")
    for ax in axes:
        ax.set_xlabel(plan.sweep.key)
        ax.grid(alpha=0.3)
        if numeric:
            ax.set_xticks(sorted(set(numeric)))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    fig.suptitle(f"{plan.env_id}: against {plan.sweep.key}")
    fig.tight_layout()
    fig.savefig(plan.out_dir / "sweep.png", dpi=110)
    plt.close(fig)


# ============================================================================================
# The whole comparison.

def compare(plan: Plan) -> list[RunOutcome]:
    """Run everything, then write report.md, results.json and the plots; returns the outcomes.
    Ctrl-C stops the runs, writes the report of those that finished, and raises KeyboardInterrupt."""
    commit = git_commit()          # before anything is written: the report dir may be in the tree
    runs, interrupted = run_comparison(plan)
    aggregates = aggregate(runs)
    provenance = {"commit": commit, "machine": machine_description(), "software": software_versions(),
                  "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    (plan.out_dir / "report.md").write_text(report_markdown(plan, runs, aggregates, provenance))
    (plan.out_dir / "results.json").write_text(
        json.dumps(results_json(plan, runs, aggregates, provenance), indent=1))
    plot_returns(plan, runs)
    if plan.sweep is not None:
        plot_sweep(plan, aggregates)
    print(f"wrote {plan.out_dir / 'report.md'}", file=sys.stderr, flush=True)
    if interrupted:
        raise KeyboardInterrupt
    return runs
