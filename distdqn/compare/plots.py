"""A comparison's plots: return against env steps and wall time, and a sweep's figures."""

from __future__ import annotations

import math
from pathlib import Path

from distdqn.compare.plan import PLOTS, Plan
from distdqn.compare.report import LabelAggregate, thresholds
from distdqn.compare.run import RunOutcome


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
