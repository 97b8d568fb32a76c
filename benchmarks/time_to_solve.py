"""Time to solve: `distdqn train` over several seeds, as a user runs it.

    python -m benchmarks.time_to_solve [--config cartpole] [--seeds 5] [--set k=v ...]
                                       [--milestone RETURN@SECONDS ...] [--curve] [--keep DIR]

Each seed is a separate `distdqn train` process; the figures come from its summary.json:
time_to_solve_s (wall clock from the start of the run to the first 10-episode greedy evaluation
with mean >= the threshold, 475 for CartPole-v1) and final_eval_return_mean (the evaluation at the end of the whole budget: did it
stay solved?). Prints a Markdown table and the median. Each ``--milestone 10@180`` adds a column:
the wall clock of the first metrics row whose evaluation reached 10, and whether that was within
180 s (a row's wall_s is when it was written, just after its evaluation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import header
from distdqn.metrics import read_metrics


def run_seed(config: str | None, seed: int, overrides: list[str], root: Path) -> dict:
    run_dir = root / f"seed{seed}"
    if run_dir.exists():
        raise SystemExit(f"--keep: {run_dir} already exists; give a new folder (runs are never overwritten)")
    cmd = [sys.executable, "-m", "distdqn.cli", "train", "--seed", str(seed), "--run-dir", str(run_dir),
           "--set", "log.progress=false"]
    if config:
        cmd.insert(4, config)
    for o in overrides:
        cmd += ["--set", o]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    # a metrics row repeats the latest evaluation until the next: keep each evaluation's first row
    rows = [r for r in read_metrics(run_dir) if r.get("eval_return_mean") is not None]
    first = {r["eval_env_steps"]: r for r in reversed(rows)}
    summary["curve"] = sorted((r["wall_s"], n, r["eval_return_mean"]) for n, r in first.items())
    summary["evals"] = [(wall, ret) for wall, _, ret in summary["curve"]]
    summary["best_eval"] = max(ret for _, ret in summary["evals"])
    return summary


def curve_line(seed: int, curve: list[tuple[float, int, float]]) -> str:
    """One seed's evaluations as ``wall s / env steps: return`` (the learning curve, in text)."""
    points = ", ".join(f"{w:.0f} s/{n / 1000:.0f}k: {r:.1f}" for w, n, r in curve)
    return f"- seed {seed}: {points}"


def parse_milestone(text: str) -> tuple[float, float]:
    ret, _, secs = text.partition("@")
    try:
        return float(ret), float(secs)
    except ValueError:
        raise SystemExit(f"--milestone {text!r}: expected RETURN@SECONDS, e.g. 10@180") from None


def reached(evals: list[tuple[float, float]], target: float) -> float | None:
    """Wall clock of the first evaluation at or above ``target``; None if none was."""
    return next((wall for wall, ret in evals if ret >= target), None)


def milestone_cell(evals: list[tuple[float, float]], target: float, deadline: float) -> str:
    wall = reached(evals, target)
    return "-" if wall is None else f"{wall:.0f} s ({'met' if wall <= deadline else 'late'})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None,
                        help="YAML config file or preset name; default: none (the defaults: cartpole)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--milestone", action="append", default=[], type=parse_milestone,
                        help="RETURN@SECONDS: when an evaluation first reached RETURN, and whether within SECONDS")
    parser.add_argument("--curve", action="store_true",
                        help="also print each seed's evaluations (wall clock, env steps, return)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the run directories under this folder (default: a temporary one)")
    args = parser.parse_args()
    rows = []
    print(header(f"Time to solve: {args.config or 'default config (CartPole-v1)'}"
                 + (f" with {' '.join(args.overrides)}" if args.overrides else "")))
    marks = "".join(f" reached {r:g} (within {d:g} s) |" for r, d in args.milestone)
    print("| seed | solved | time to solve (s) | env steps to solve | best eval | final eval | "
          f"run wall (s) | env steps | updates |{marks}")
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(args.milestone))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            s = run_seed(args.config, seed, args.overrides, root)
            rows.append(s)
            t = f"{s['time_to_solve_s']:.2f}" if s["solved"] else "-"
            print(f"| {seed} | {s['solved']} | {t} | {s['env_steps_to_solve'] or '-'} | "
                  f"{s['best_eval']:.1f} | {s['final_eval_return_mean']:.1f} | {s['wall_s']:.1f} | "
                  f"{s['env_steps']} | {s['learner_updates']} |"
                  + "".join(f" {milestone_cell(s['evals'], r, d)} |" for r, d in args.milestone), flush=True)
    threshold = rows[0]["solve_threshold"]
    times = [s["time_to_solve_s"] for s in rows if s["solved"]]
    stayed = sum(s["final_eval_return_mean"] >= threshold for s in rows)
    median = statistics.median(times) if len(times) == len(rows) else float("inf")
    print(f"\nsolved {len(times)}/{len(rows)}; median time to solve {median:.2f} s; "
          f"final eval >= {threshold:g} in {stayed}/{len(rows)}")
    for r, d in args.milestone:
        met = sum((w := reached(s["evals"], r)) is not None and w <= d for s in rows)
        print(f"reached {r:g} within {d:g} s in {met}/{len(rows)}")
    if args.curve:
        print("\nEvaluations (wall clock / env steps: greedy mean):")
        for seed, s in zip(range(args.first_seed, args.first_seed + args.seeds), rows):
            print(curve_line(seed, s["curve"]))


if __name__ == "__main__":
    main()
