"""A comparison's figures: aggregates over seeds (pure), the report's tables and its provenance."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distdqn.compare.plan import Plan
from distdqn.compare.run import RunOutcome


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
    repo = repo or Path(__file__).resolve().parents[2]   # the checkout holding distdqn/compare/
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
