"""Time to solve CartPole-v1: `distdqn train` over several seeds, as a user runs it.

    python benchmarks/solve_cartpole.py [--config configs/cartpole.yaml] [--seeds 5] [--set k=v ...]

Each seed is a separate `distdqn train` process; the figures come from its summary.json:
time_to_solve_s (wall clock from the start of the run to the first 10-episode greedy evaluation
with mean >= 475) and final_eval_return_mean (the evaluation at the end of the whole budget: did it
stay solved?). Prints a Markdown table and the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_seed(config: str | None, seed: int, overrides: list[str], root: Path) -> dict:
    run_dir = root / f"seed{seed}"
    cmd = [sys.executable, "-m", "distdqn.cli", "train", "--seed", str(seed), "--run-dir", str(run_dir),
           "--set", "log.progress=false"]
    if config:
        cmd.insert(4, config)
    for o in overrides:
        cmd += ["--set", o]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            s = run_seed(args.config, seed, args.overrides, Path(tmp))
            rows.append(s)
            print(f"| {seed} | {s['solved']} | {s['time_to_solve_s'] or float('nan'):.2f} | "
                  f"{s['env_steps_to_solve']} | {s['final_eval_return_mean']:.1f} | {s['wall_s']:.1f} |",
                  flush=True)
    times = [s["time_to_solve_s"] for s in rows if s["solved"]]
    stayed = sum(s["final_eval_return_mean"] >= 475 for s in rows)
    median = statistics.median(times) if len(times) == len(rows) else float("inf")
    print(f"solved {len(times)}/{len(rows)}; median time to solve {median:.2f} s; "
          f"final eval >= 475 in {stayed}/{len(rows)}")


if __name__ == "__main__":
    main()
