"""Plots of runs: return against env steps and against wall-clock time."""

from __future__ import annotations

from pathlib import Path

from distdqn.errors import UserError
from distdqn.metrics import read_metrics


def _series(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    points = [(r[x], r[y]) for r in rows if r.get(y) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _label(run_dir: Path, rows: list[dict]) -> str:
    return run_dir.name


def plot_runs(run_dirs: list[Path], output: Path, labels: list[str] | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for run_dir in run_dirs:
        if not (Path(run_dir) / "metrics.jsonl").is_file():
            raise UserError(f"{run_dir}: no metrics.jsonl (is it a run directory?)")
        runs.append((Path(run_dir), read_metrics(run_dir)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (run_dir, rows) in enumerate(runs):
        label = labels[i] if labels else _label(run_dir, rows)
        color = f"C{i % 10}"
        for ax, x in zip(axes, ("env_steps", "wall_s")):
            xs, ys = _series(rows, x, "eval_return_mean")
            ax.plot(xs, ys, color=color, label=f"{label} (eval)", marker=".")
            xs, ys = _series(rows, x, "episode_return_mean")
            ax.plot(xs, ys, color=color, alpha=0.3, linestyle="--")
    for ax, xlabel in zip(axes, ("environment steps", "wall-clock seconds")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("return (solid: greedy eval, dashed: training episodes)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
