"""Scaling past the cores: apex actors and async_ps / allreduce workers at 1, 2, 4, 8, 16, each
environment step answering ``env.step_latency_ms`` later without using the CPU (simulators that
run elsewhere), so that acting can scale beyond this machine's cores while learning cannot.

    python -m benchmarks.scaling [--config cartpole] [--counts 1 2 4 8 16] [--latency-ms 5]
                                 [--setups apex async_ps allreduce] [--steps-per-process 12000]
                                 [--plot benchmarks/scaling.png]

Every run is a `distdqn train` process, one at a time, no evaluation during training; its budget
is ``--steps-per-process`` env steps per actor or worker. Steady env steps/s: the median of the
per-interval rates in metrics.jsonl (start-up and the final evaluation left out). Speed-up is
against the same setup with one process; parallel efficiency is speed-up / count. Beside them,
what bounds the run: apex's learner busy share (near 100%: the learner is the ceiling, and the
replay ratio holds the actors back), and the updates/s every setup makes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.apex_scaling import train
from benchmarks.common import header

COUNT_KEY = {"apex": "apex.num_actors", "async_ps": "workers.num_workers", "allreduce": "workers.num_workers"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="cartpole", help="YAML config file or preset name")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--setups", nargs="+", default=list(COUNT_KEY), choices=list(COUNT_KEY))
    parser.add_argument("--steps-per-process", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, help="write throughput vs count here (PNG)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value, for every run")
    args = parser.parse_args()
    print(header(f"Scaling past the cores ({args.config}, env.step_latency_ms={args.latency_ms:g}, "
                 f"{args.steps_per_process} env steps per process, seed {args.seed})"))
    print("| setup | processes | steady env steps/s | speed-up | parallel efficiency | steady updates/s "
          "| learner busy | run wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    results: dict[str, list[tuple[int, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setup in args.setups:
            for count in args.counts:
                steps = args.steps_per_process * count
                run = train([args.config, "--seed", str(args.seed), "--set", f"topology={setup}",
                             "--set", f"{COUNT_KEY[setup]}={count}", "--set", f"env.step_latency_ms={args.latency_ms}",
                             "--set", f"train.total_env_steps={steps}", "--set", f"eval.interval_env_steps={steps}",
                             "--set", f"log.interval_env_steps={max(steps // 12, 500)}",
                             "--set", "train.torch_threads=1",
                             *(x for kv in args.overrides for x in ("--set", kv))],
                            Path(tmp) / f"{setup}-{count}")
                rate = run["steady_env_steps_per_s"]
                results.setdefault(setup, []).append((count, rate))
                base = results[setup][0][1]
                busy = f"{run['learner_busy_share']:.0%}" if setup == "apex" else "-"
                print(f"| {setup} | {count} | {rate:,.0f} | {rate / base:.2f}x | {rate / base / count:.0%} | "
                      f"{run['steady_updates_per_s']:,.0f} | {busy} | {run['wall_s']:.1f} |", flush=True)
    if args.plot is not None:
        _plot(results, args)
        print(f"\n![throughput against processes]({args.plot.name})")


def _plot(results: dict[str, list[tuple[int, float]]], args: argparse.Namespace) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (setup, points) in enumerate(results.items()):
        counts, rates = zip(*points)
        ax.plot(counts, rates, marker="o", color=f"C{i}", label=setup)
        ax.plot(counts, [rates[0] * c / counts[0] for c in counts], color=f"C{i}", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(args.counts, [str(c) for c in args.counts])
    ax.set_xlabel("actors (apex) or workers")
    ax.set_ylabel("steady env steps/s")
    ax.set_title(f"{args.config}, {args.latency_ms:g} ms per env step (dotted: linear scaling)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
