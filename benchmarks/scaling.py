"""Scaling past the cores: apex actors (with 1 or 2 learners, 1 or 2 replay shards) and async_ps /
allreduce workers at 1, 2, 4, 8, 16, each environment step answering ``env.step_latency_ms``
later without using the CPU (simulators that run elsewhere), so that acting can scale beyond
this machine's cores while learning cannot.

    python -m benchmarks.scaling [--config cartpole] [--counts 1 2 4 8 16] [--latency-ms 5]
                                 [--setups apex async_ps allreduce] [--learners 1 2] [--shards 1 2]
                                 [--steps-per-process 12000] [--plot benchmarks/scaling.png]

Every run is a `distdqn train` process, one at a time, no evaluation during training; its budget
is ``--steps-per-process`` env steps per actor or worker. apex runs once per (learners, shards)
pair; past 1 x 1 with ``apex.replay_host=process`` (what shards and learner groups need).
Steady env steps/s: the median of the per-interval rates in metrics.jsonl (start-up and the
final evaluation left out). Speed-up is against the same setup with one process, and for apex
also against 1 learner x 1 shard with one actor ("x base"); parallel efficiency is speed-up /
count. Beside them, what bounds the run, over its steady rows:
- learner busy: learner 0's share of the wall time sampling and updating (its exchanges with the
  other learners included); near 100%: the learners are the ceiling;
- replay wait: learner 0's share waiting for batches (the rate limiter holding it for the
  actors, and the draws' round trips); exchange: its share in the group's exchanges;
- insert wait: the actors' mean share waiting for the replay to take their inserts (the rate
  limiter holding them for the learners);
- cores: CPU time per role over the middle of the run (its processes read from /proc through
  processes.json), in cores: where this machine's cores went.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import header
from distdqn.metrics import read_metrics

COUNT_KEY = {"apex": "apex.num_actors", "async_ps": "workers.num_workers", "allreduce": "workers.num_workers"}
ROLES = ("learner", "replay", "actor", "driver")
TICKS = 100.0   # /proc clock ticks per second (Linux's USER_HZ)


def cpu_seconds(run_dir: Path, known: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds so far per role (learners, replay shards, actors, driver) of a running run;
    ``known`` keeps each process's last reading (a process that has ended keeps its count)."""
    try:
        processes = json.loads((run_dir / "processes.json").read_text())
    except (OSError, ValueError):
        processes = {}
    for name, p in processes.items():   # a replay hosted by the learner is the learner's process
        role = next((r for r in ROLES if name.startswith(r)), None)
        if role is None or not p or (p["pid"] in known and known[p["pid"]][0] != role):
            continue
        try:
            fields = Path(f"/proc/{p['pid']}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        known[p["pid"]] = (role, (int(fields[11]) + int(fields[12])) / TICKS)
    out = dict.fromkeys(ROLES, 0.0)
    for role, seconds in known.values():
        out[role] += seconds
    return out


def train(args: list[str], run_dir: Path) -> dict:
    """One `distdqn train` run, its CPU sampled each second; its summary with the steady figures."""
    cmd = [sys.executable, "-m", "distdqn.cli", "train", *args, "--run-dir", str(run_dir), "--set", "log.progress=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples, start, known = [], time.perf_counter(), {}
    while proc.poll() is None:
        time.sleep(1.0)
        cpu = cpu_seconds(run_dir, known)
        if known:
            samples.append((time.perf_counter() - start, cpu))
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-1500:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics(run_dir)
    steady = rows[1:-1] or rows
    summary["steady_env_steps_per_s"] = statistics.median([r["env_steps_per_s"] for r in steady
                                                           if r["env_steps_per_s"] > 0] or [float("nan")])
    summary["steady_updates_per_s"] = statistics.median([r["updates_per_s"] for r in steady
                                                         if r["updates_per_s"] > 0] or [float("nan")])
    first, last = steady[0], steady[-1]
    wall = max(last["wall_s"] - first["wall_s"], 1e-9)

    def share(key: str, per: float = 1.0) -> float:
        return (last.get(key, 0.0) - first.get(key, 0.0)) / wall / per

    summary["learner_busy_share"] = share("learner_busy_s")
    summary["replay_wait_share"] = share("learner_wait_s")
    summary["exchange_share"] = share("learner_exchange_s")
    summary["insert_wait_share"] = share("replay_insert_wait_s", summary.get("num_actors", 1))
    summary["cores"] = _cores(samples)
    return summary


def _cores(samples: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Cores used per role between 30% and 90% of the run's samples (start-up and the end left out)."""
    if len(samples) < 4:
        return {}
    (t0, a), (t1, b) = samples[int(0.3 * len(samples))], samples[int(0.9 * len(samples)) - 1]
    return {role: (b[role] - a[role]) / max(t1 - t0, 1e-9) for role in ROLES} if t1 > t0 else {}


def setups(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(name, topology, extra overrides) of every setup to run."""
    out = []
    for setup in args.setups:
        if setup != "apex":
            out.append((setup, setup, []))
            continue
        for learners in args.learners:
            for shards in args.shards:
                extra = ["--set", f"apex.num_learners={learners}", "--set", f"apex.replay_shards={shards}"]
                if learners > 1 or shards > 1:
                    extra += ["--set", "apex.replay_host=process"]
                out.append((f"apex {learners}L x {shards}S", setup, extra))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="cartpole", help="YAML config file or preset name")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--setups", nargs="+", default=list(COUNT_KEY), choices=list(COUNT_KEY))
    parser.add_argument("--learners", type=int, nargs="+", default=[1], help="apex.num_learners values (apex)")
    parser.add_argument("--shards", type=int, nargs="+", default=[1], help="apex.replay_shards values (apex)")
    parser.add_argument("--steps-per-process", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", type=float, default=None,
                        help="env steps/s of apex 1L x 1S with one actor (measured earlier in the same series)")
    parser.add_argument("--plot", type=Path, default=None, help="write throughput vs count here (PNG)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value, for every run")
    args = parser.parse_args()
    print(header(f"Scaling past the cores ({args.config}, env.step_latency_ms={args.latency_ms:g}, "
                 f"{args.steps_per_process} env steps per process, seed {args.seed})"))
    print("| setup | processes | steady env steps/s | speed-up | x base | parallel efficiency | steady updates/s "
          "| learner busy | replay wait | exchange | insert wait | cores: learners / replay / actors / driver "
          "| run wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results: dict[str, list[tuple[int, float]]] = {}
    base = args.base
    with tempfile.TemporaryDirectory() as tmp:
        for name, topology, extra in setups(args):
            for count in args.counts:
                steps = args.steps_per_process * count
                run = train([args.config, "--seed", str(args.seed), "--set", f"topology={topology}",
                             "--set", f"{COUNT_KEY[topology]}={count}", "--set", f"env.step_latency_ms={args.latency_ms}",
                             "--set", f"train.total_env_steps={steps}", "--set", f"eval.interval_env_steps={steps}",
                             "--set", f"log.interval_env_steps={max(steps // 12, 500)}",
                             "--set", "train.torch_threads=1", *extra,
                             *(x for kv in args.overrides for x in ("--set", kv))],
                            Path(tmp) / f"{name.replace(' ', '')}-{count}")
                rate = run["steady_env_steps_per_s"]
                results.setdefault(name, []).append((count, rate))
                own = results[name][0][1]
                if name == "apex 1L x 1S" and count == args.counts[0]:
                    base = rate
                apex = topology == "apex"
                cores = run["cores"]
                print(f"| {name} | {count} | {rate:,.0f} | {rate / own:.2f}x | "
                      f"{f'{rate / base:.2f}x' if apex and base else '-'} | {rate / own / count:.0%} | "
                      f"{run['steady_updates_per_s']:,.0f} | "
                      + (f"{run['learner_busy_share']:.0%} | {run['replay_wait_share']:.0%} | "
                         f"{run['exchange_share']:.0%} | {run['insert_wait_share']:.0%} | " if apex else "- | - | - | - | ")
                      + (" / ".join(f"{cores[r]:.2f}" for r in ROLES) if cores else "-")
                      + f" | {run['wall_s']:.1f} |", flush=True)
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
