"""The data-parallel topologies beside single: steady env steps/s, seed-paired, no evaluation
during training (issue 13's measure).

    python -m benchmarks.data_parallel [--config cartpole] [--seeds 3] [--steps 30000] [--workers 2]
                                       [--setups single allreduce-shm sync_ps sync_ps-ray async_ps ...]
                                       [--set key=value ...] [--baseline DIR]

Every run is a `distdqn train` process, one at a time, seed by seed with every setup in turn (this
machine's speed drifts over minutes, so each run sits next to single's of the same seed). Each
worker draws batches from its own replay at the config's replay ratio, so N workers learn from N
times the batches per env step of the whole run (the per-worker replay ratio is single's). Steady
env steps/s: the median of the per-interval rates in metrics.jsonl, start-up and the final
evaluation left out; "x single" is the median over seeds of the ratio to single's run of the same
seed. Beside it, the run's time outside the steady rate (wall time minus env steps / steady rate:
Ray's start-up, the final evaluation). ``--baseline DIR`` (another checkout, e.g. a `git worktree`
of the commit before a change) runs every setup there too, right after the same setup and seed
here: the "x baseline" column is the median over seeds of this tree's rate over the baseline's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.apex_scaling import train
from benchmarks.common import header

SETUPS = {
    "single": [],
    "allreduce-shm": ["--set", "topology=allreduce", "--set", "allreduce.backend=shm"],
    "allreduce-gloo": ["--set", "topology=allreduce", "--set", "allreduce.backend=gloo"],
    "sync_ps": ["--set", "topology=sync_ps", "--set", "sync_ps.transport=shm"],
    "sync_ps-ray": ["--set", "topology=sync_ps", "--set", "sync_ps.transport=ray"],
    "sync_ps-model": ["--set", "topology=sync_ps", "--set", "sync_ps.mode=model", "--set", "sync_ps.transport=shm"],
    "sync_ps-model-ray": ["--set", "topology=sync_ps", "--set", "sync_ps.mode=model", "--set", "sync_ps.transport=ray"],
    "async_ps": ["--set", "topology=async_ps", "--set", "async_ps.transport=shm"],
    "async_ps-ray": ["--set", "topology=async_ps", "--set", "async_ps.transport=ray"],
    "sync_ps-tcp": ["--set", "topology=sync_ps", "--set", "sync_ps.transport=tcp"],
    "async_ps-tcp": ["--set", "topology=async_ps", "--set", "async_ps.transport=tcp"],
    "async_ps-parameter": ["--set", "topology=async_ps", "--set", "async_ps.mode=parameter",
                           "--set", "async_ps.transport=shm"],
}
DEFAULT_SETUPS = ["single", "allreduce-shm", "allreduce-gloo", "sync_ps", "sync_ps-ray", "sync_ps-model",
                  "async_ps", "async_ps-ray"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="cartpole", help="YAML config file or preset name")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30_000, help="train.total_env_steps")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--setups", nargs="+", default=DEFAULT_SETUPS, choices=list(SETUPS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value, for every run")
    parser.add_argument("--baseline", type=Path, help="another checkout whose runs pair with these, seed by seed")
    args = parser.parse_args()
    common = [args.config, "--set", f"train.total_env_steps={args.steps}",
              "--set", f"eval.interval_env_steps={args.steps}", "--set", "eval.stop_when_solved=false",
              "--set", f"log.interval_env_steps={max(args.steps // 15, 500)}",
              "--set", f"workers.num_workers={args.workers}", "--set", "train.torch_threads=1",
              *(x for kv in args.overrides for x in ("--set", kv))]
    setups = ["single", *(s for s in args.setups if s != "single")]
    print(header(f"Data-parallel topologies beside single ({args.config}, {args.workers} workers, "
                 f"{args.steps} env steps, {', '.join(args.overrides) or 'no overrides'})"))
    if args.baseline is not None:
        print(f"Each setup also from the checkout {args.baseline} (`git -C {args.baseline} rev-parse --short HEAD`: "
              f"{_commit(args.baseline)}), right after this tree's run of the same seed.\n")
    print("| setup | steady env steps/s (x single) | x baseline | steady updates/s | where the time goes (steady) "
          "| outside the steady rate (s) | run wall (s) | final eval |")
    print("|---|---|---|---|---|---|---|---|")
    trees = {"": None} if args.baseline is None else {"": None, " (baseline)": args.baseline}
    runs: dict[str, list[dict]] = {name + t: [] for name in setups for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for name in setups:
                for suffix, tree in trees.items():
                    run_dir = Path(tmp) / f"{name}{suffix.strip().strip('()')}-{seed}"
                    summary = train([*common, *SETUPS[name], "--seed", str(seed)], run_dir, tree)
                    # the run's time beyond its env steps at the steady rate: start-up, final evaluation
                    summary["outside_s"] = summary["wall_s"] - summary["env_steps"] / summary["steady_env_steps_per_s"]
                    runs[name + suffix].append(summary)
    for label, done in runs.items():
        single = runs["single" + label.removeprefix(label.split(" ")[0])]
        paired = statistics.median(r["steady_env_steps_per_s"] / s["steady_env_steps_per_s"]
                                   for r, s in zip(done, single, strict=True))
        base = runs.get(label + " (baseline)")
        vs_base = (f"{statistics.median(r['steady_env_steps_per_s'] / b['steady_env_steps_per_s'] for r, b in zip(done, base, strict=True)):.2f}x"
                   if base else "-")
        print(f"| {label} | {statistics.median(r['steady_env_steps_per_s'] for r in done):,.0f} ({paired:.2f}x) | {vs_base} | "
              f"{statistics.median(r['steady_updates_per_s'] for r in done):,.0f} | "
              f"{_shares(done, args.workers)} | "
              f"{statistics.median(r['outside_s'] for r in done):.1f} | "
              f"{statistics.median(r['wall_s'] for r in done):.1f} | "
              f"{statistics.median(r['final_eval_return_mean'] for r in done):.0f} |", flush=True)


def _commit(tree: Path) -> str:
    import subprocess
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or "unknown"


def _shares(runs: list[dict], workers: int) -> str:
    """The roles' busy and wait shares of the steady window (medians over seeds), from the metrics'
    cumulative seconds: each worker's (shm parameter servers), the server's, rank 0's exchange wait."""
    parts = []
    for key, label, per in (("worker_busy_s", "workers busy", workers), ("worker_wait_s", "workers wait", workers),
                            ("server_wait_s", "server waits", 1), ("rank0_exchange_wait_s", "rank 0 waits", 1)):
        shares = [(last[key] - first[key]) / ((last["wall_s"] - first["wall_s"]) * per)
                  for first, last in (r["steady_rows"] for r in runs)
                  if key in first and key in last and last["wall_s"] > first["wall_s"]]
        if shares:
            parts.append(f"{label} {statistics.median(shares):.0%}")
    return ", ".join(parts) or "-"


if __name__ == "__main__":
    main()
