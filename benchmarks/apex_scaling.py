"""Ape-X beside single, at the same replay ratio: time to solve, env steps/s and where the time goes.

    python -m benchmarks.apex_scaling [--config cartpole] [--seeds 3] [--actors 1 2 4]
                                      [--ratios 0.5 0.125] [--steps N] [--set key=value ...]
                                      [--apex-set key=value ... [--apex-set ...]]

Every run is a `distdqn train` process, one at a time. `single` runs the config as it is;
apex runs the same config with `topology=apex`, prioritized replay (Ape-X's), and 1, 2, 4 actors
sharing the cores the learner leaves (actor_cpus = 1/N). A second single row uses prioritized
replay too, so that the cost of prioritization and the gain of overlapping can be told apart.
Each --apex-set adds an apex row (with the first --actors count) that runs with those settings
too, seed-paired like the rest: an A/B of apex's own settings that this machine's drift does not
blur (compare its "x single" with the plain apex row's). With --ratios, each ratio is a group of
rows (single, then apex) with `train.replay_ratio` set to it for both: the apex replay's rate
limiter holds apex to it. Figures per run come from its summary.json and metrics.jsonl:
- time to solve: wall clock from the start of the run, Ray's start-up included for apex;
- steady env steps/s: the median of the per-interval rates in metrics.jsonl (start-up and the
  final evaluation excluded); beside it, the median over seeds of its ratio to single's run of the
  same seed. Runs go seed by seed, every setup in turn, so that each pair ran minutes apart at
  most: this shared machine's speed drifts by tens of percent over a quarter of an hour;
- learner busy: the share of the steady wall time the learner spent sampling and updating
  (single: its own loop; apex: the learner process). 1 / single's share is what overlapping acting
  with learning can gain at most (Amdahl), if apex's learner updated as fast as single's;
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


def train(args: list[str], run_dir: Path, tree: Path | None = None) -> dict:
    """One `distdqn train` run (of the checkout ``tree``, default this one's working directory)."""
    cmd = [sys.executable, "-m", "distdqn.cli", "train", *args, "--run-dir", str(run_dir),
           "--set", "log.progress=false"]
    done = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tree)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-1500:]}")
    return read_run(run_dir)


def read_run(run_dir: Path) -> dict:
    """A finished run's summary with its steady rates (the medians of the per-interval rates, the
    start-up and end rows left out), learner busy share and the steady window's first and last rows."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics(run_dir)
    # the first row holds the start-up; the final rows (the last evaluation's, the end's) stand at the end's env steps
    steady = [r for r in rows[1:] if r["env_steps"] < rows[-1]["env_steps"]] or rows
    rates = [r["env_steps_per_s"] for r in steady if r["env_steps_per_s"] > 0]
    summary["steady_env_steps_per_s"] = statistics.median(rates) if rates else float("nan")
    summary["steady_updates_per_s"] = statistics.median(
        [r["updates_per_s"] for r in steady if r["updates_per_s"] > 0] or [float("nan")])
    first, last = steady[0], steady[-1]
    busy = last.get("learner_busy_s", 0.0) - first.get("learner_busy_s", 0.0)
    summary["learner_busy_share"] = busy / max(last["wall_s"] - first["wall_s"], 1e-9)
    summary["steady_rows"] = (first, last)
    return summary


def _median_range(values: list[float], fmt: str, unit: str = "") -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):{fmt}}{unit} [{min(values):{fmt}}-{max(values):{fmt}}{unit}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="cartpole", help="YAML config file or preset name")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--ratios", type=float, nargs="*", default=[],
                        help="train.replay_ratio values (both sides); default: the config's own")
    parser.add_argument("--steps", type=int, default=None, help="train.total_env_steps (default: the config's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value, for every run")
    parser.add_argument("--apex-set", dest="apex_variants", action="append", nargs="+", default=[],
                        metavar="KEY=VALUE", help="an extra apex row with these settings (repeatable)")
    args = parser.parse_args()

    common = [args.config, *(x for kv in args.overrides for x in ("--set", kv))]
    if args.steps:
        common += ["--set", f"train.total_env_steps={args.steps}"]

    def apex(n: int) -> tuple[str, list[str]]:
        return (f"apex, {n} actor{'s' if n > 1 else ''}",
                ["--set", "topology=apex", "--set", "replay.prioritized=true", "--set", f"apex.num_actors={n}",
                 "--set", f"apex.actor_cpus={min(1.0, 1.0 / n):.3f}"])

    setups = [("single", []), ("single, prioritized replay", ["--set", "replay.prioritized=true"])]
    setups += [apex(n) for n in args.actors]
    for variant in args.apex_variants:
        name, extra = apex(args.actors[0])
        setups.append((f"{name}, {' '.join(variant)}", [*extra, *(x for kv in variant for x in ("--set", kv))]))
    settings = ", ".join([args.config, *args.overrides, *([f"{args.steps} env steps"] if args.steps else [])])
    print(header(f"Ape-X beside single at the same replay ratio ({settings})"))
    print("| replay ratio | setup | seeds solved | time to solve (s), median [range] | env steps to solve | "
          "final eval (median) | steady env steps/s | steady updates/s | learner busy | overall env steps/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in args.ratios or [None]:
            ratio_set = [] if ratio is None else ["--set", f"train.replay_ratio={ratio}"]
            # seed by seed, every setup in turn: the machine's speed drifts over minutes, so each
            # setup's run sits next to single's run of the same seed (paired ratios below)
            runs: dict[str, list[dict]] = {name: [] for name, _ in setups}
            for seed in range(args.seeds):
                for name, extra in setups:
                    runs[name].append(train([*common, *ratio_set, *extra, "--seed", str(seed)],
                                            Path(tmp) / f"{ratio}-{name}-{seed}".replace(" ", "_").replace(",", "")))
            for name, _ in setups:
                done = runs[name]
                solved = [r for r in done if r["solved"]]
                rate = statistics.median(r["steady_env_steps_per_s"] for r in done)
                paired = statistics.median(r["steady_env_steps_per_s"] / s["steady_env_steps_per_s"]
                                           for r, s in zip(done, runs["single"], strict=True))
                share = statistics.median(r["learner_busy_share"] for r in done)
                busy = (f"{share:.0%} (ceiling {1 / share:.2f}x)" if name.startswith("single") and share > 0
                        else f"{share:.0%}")
                print(f"| {'config' if ratio is None else f'{ratio:g}'} | {name} | {len(solved)}/{len(done)} | "
                      f"{_median_range([r['time_to_solve_s'] for r in solved], '.1f')} | "
                      f"{_median_range([r['env_steps_to_solve'] / 1000 for r in solved], '.0f', 'k')} | "
                      f"{statistics.median(r['final_eval_return_mean'] for r in done):.0f} | "
                      f"{rate:,.0f} ({paired:.2f}x single) | "
                      f"{statistics.median(r['steady_updates_per_s'] for r in done):,.0f} | {busy} | "
                      f"{statistics.median(r['env_steps'] / r['wall_s'] for r in done):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
