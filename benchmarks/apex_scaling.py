"""Ape-X beside single, and Ape-X with 1, 2, 4 actors: time to solve and env steps/s, in one run.

    python -m benchmarks.apex_scaling [--seeds 3] [--actors 1 2 4]

Every configuration is a `distdqn train` process on CartPole-v1 at the same replay ratio (the
preset's 0.5 learner updates per env step, which the apex replay's rate limiter enforces).
Figures per run come from its summary.json and metrics.jsonl:
- time to solve: wall clock from the start of the run, Ray's start-up included for apex;
- steady env steps/s: the median of the per-interval rates in metrics.jsonl (start-up excluded);
- overall env steps/s: env steps / run wall time (start-up included).
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


def train(args: list[str], run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "distdqn.cli", "train", *args, "--run-dir", str(run_dir),
           "--set", "log.progress=false"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics(run_dir)
    rates = [r["env_steps_per_s"] for r in rows[1:-1] if r["env_steps_per_s"] > 0]
    summary["steady_env_steps_per_s"] = statistics.median(rates) if rates else float("nan")
    summary["steady_updates_per_s"] = statistics.median(
        [r["updates_per_s"] for r in rows[1:-1] if r["updates_per_s"] > 0] or [float("nan")])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    setups = [("single", [])] + [
        (f"apex, {n} actor{'s' if n > 1 else ''}", ["configs/cartpole-apex.yaml", "--set", f"apex.num_actors={n}",
                                                   "--set", f"apex.actor_cpus={min(1.0, 1.0 / n):.3f}",
                                                   "--set", "train.total_env_steps=40000"])
        for n in args.actors]
    print(header("Ape-X beside single on CartPole-v1 (replay ratio 0.5, 40k env steps)"))
    print("| setup | seeds solved | time to solve (s), median [range] | final eval (median) | "
          "steady env steps/s | steady updates/s | overall env steps/s |")
    print("|---|---|---|---|---|---|---|")
    base_rate = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in setups:
            runs = [train([*extra, "--seed", str(seed)], Path(tmp) / f"{name}-{seed}".replace(" ", "_").replace(",", ""))
                    for seed in range(args.seeds)]
            times = [r["time_to_solve_s"] for r in runs if r["solved"]]
            rate = statistics.median(r["steady_env_steps_per_s"] for r in runs)
            base_rate = base_rate or rate
            t = (f"{statistics.median(times):.1f} [{min(times):.1f}-{max(times):.1f}]" if times else "-")
            print(f"| {name} | {len(times)}/{len(runs)} | {t} | "
                  f"{statistics.median(r['final_eval_return_mean'] for r in runs):.0f} | "
                  f"{rate:,.0f} ({rate / base_rate:.2f}x single) | "
                  f"{statistics.median(r['steady_updates_per_s'] for r in runs):,.0f} | "
                  f"{statistics.median(r['env_steps'] / r['wall_s'] for r in runs):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
