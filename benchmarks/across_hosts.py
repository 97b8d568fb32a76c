"""Each topology with its workers on another host against the same run on one host (issue 26's
measure), on the one-machine cluster of `distdqn.hosts` (docs/hosts.md).

    python -m benchmarks.across_hosts [--seeds 2] [--steps 20000] [--rates none 1gbit 100mbit]
                                      [--setups async_ps sync_ps allreduce apex]

Per setup and seed, two clusters one after the other, the driver always in h0:

- **one host**: a 1-host cluster, every role in h0 (the update channel finds the server's shared
  memory; allreduce's ranks reduce in shared memory);
- **two hosts**: a 2-host cluster shaped so that the workers cannot sit beside the server:
  `async_ps` / `sync_ps` a head with no CPUs (the server is the driver, in h0; both workers in h1,
  each over its socket to the server), `allreduce` one CPU per host (one rank per host: gloo
  between them), `apex` one CPU per host (the learner on one host, the actor on the other). The
  run is repeated with h1's link limited by `tc tbf` to each of ``--rates`` (`none`: unlimited).

Steady env steps/s as in benchmarks/data_parallel.py (the median of the per-interval rates,
start-up and the end rows left out, no evaluation during training); "x one host" is the median
over seeds of the ratio to the one-host run of the same seed, "x single" of `single`'s run on the
one-host cluster of the same seed (CartPole setups only). Bytes per update: what h1's interface
sent and received during the run (``/proc/net/dev`` inside h1: every byte, Ray's own traffic
included) over the run's learner updates. Every host shares this machine's cores: read the ratios,
not the rates. Run it alone on the machine (`flock -x /work/cpu.lock`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.apex_scaling import read_run
from benchmarks.common import header
from distdqn.hosts import HostCluster

REPO = Path(__file__).resolve().parent.parent
SHORT = ["--set", "log.progress=false", "--set", "train.torch_threads=1", "--set", "eval.stop_when_solved=false"]


@dataclass(frozen=True)
class Setup:
    """A topology's runs: its config, and the shape of each cluster (``up``'s arguments)."""

    config: str
    sets: tuple[str, ...]
    one_host: dict = field(default_factory=lambda: {"n": 1, "cpus_per_host": 2})
    two_hosts: dict = field(default_factory=lambda: {"n": 2, "cpus_per_host": 1})

    @property
    def cartpole(self) -> bool:
        return self.config.startswith("cartpole")


SETUPS = {
    "async_ps": Setup("cartpole-async_ps", ("workers.num_workers=2", "workers.cpus=1"),
                      two_hosts={"n": 2, "cpus_per_host": 2, "head_cpus": 0}),
    "sync_ps": Setup("cartpole-sync_ps", ("workers.num_workers=2", "workers.cpus=1"),
                     two_hosts={"n": 2, "cpus_per_host": 2, "head_cpus": 0}),
    "allreduce": Setup("lunarlander-allreduce", ("workers.num_workers=2", "workers.cpus=1")),
    "apex": Setup("acrobot-apex", ("apex.num_actors=1", "apex.actor_cpus=1", "apex.learner_cpus=1",
                                   "apex.isolate_learner=false")),
}


def _net_bytes(cluster: HostCluster, host: str) -> int:
    """Bytes eth0 of ``host`` has sent plus received (its own network namespace's /proc/net/dev)."""
    out = cluster.run(host, ["cat", "/proc/net/dev"], timeout=30).stdout
    for line in out.splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "eth0":
            values = counters.split()
            return int(values[0]) + int(values[8])
    raise RuntimeError(f"no eth0 in {host}'s /proc/net/dev")


def _placement(run_dir: Path) -> str:
    """The run's roles grouped by the Ray node they ran on (from processes.json), e.g.
    ``driver learner | actor0``: one group per node."""
    if not (run_dir / "processes.json").exists():
        return "driver"   # single: one process
    by_node: dict[str, list[str]] = {}
    for role, p in json.loads((run_dir / "processes.json").read_text()).items():
        if p:
            by_node.setdefault(p["node_id"], []).append(role)
    return " \\| ".join(" ".join(sorted(roles)) for roles in sorted(by_node.values(), key=lambda r: "driver" not in r))


def _train(cluster: HostCluster, config: str, sets: list[str], seed: int, run_dir: Path) -> dict:
    argv = [sys.executable, "-m", "distdqn.cli", "train", config, "--address", cluster.address,
            "--run-dir", str(run_dir), "--seed", str(seed), *SHORT, *(x for kv in sets for x in ("--set", kv))]
    watched = "h1" if len(cluster.hosts) > 1 else None
    before = _net_bytes(cluster, watched) if watched else 0
    done = cluster.run("h0", argv, cwd=REPO, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{config} {' '.join(sets)} failed ({done.returncode}): {done.stderr[-1500:]}")
    run = read_run(run_dir)
    run["link_bytes"] = _net_bytes(cluster, watched) - before if watched else 0
    run["placement"] = _placement(run_dir)
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20_000, help="train.total_env_steps")
    parser.add_argument("--rates", nargs="+", default=["none", "1gbit", "100mbit"],
                        help="h1's link in the two-host runs (tc tbf); none: unlimited")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--max-wall-s", type=float, default=150.0, help="train.max_wall_s of every run")
    args = parser.parse_args()
    common = [f"train.total_env_steps={args.steps}", f"eval.interval_env_steps={args.steps}",
              f"log.interval_env_steps={max(args.steps // 15, 500)}", f"train.max_wall_s={args.max_wall_s:g}"]
    print(header(f"Topologies with their workers on another host ({args.steps} env steps, "
                 f"h1's link: {', '.join(args.rates)})"))
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for name in args.setups:
                setup, sets = SETUPS[name], [*common, *SETUPS[name].sets]
                with HostCluster("b" + name.replace("_", "")[:12]).up(**setup.one_host) as cluster:
                    if setup.cartpole and seed not in runs.get(("single", "one host"), {}):
                        runs.setdefault(("single", "one host"), {})[seed] = _train(
                            cluster, "cartpole", common, seed, Path(tmp) / f"single-{seed}")
                    runs.setdefault((name, "one host"), {})[seed] = _train(
                        cluster, setup.config, sets, seed, Path(tmp) / f"{name}-1-{seed}")
                with HostCluster("b" + name.replace("_", "")[:12]).up(**setup.two_hosts) as cluster:
                    for rate in args.rates:
                        cluster.limit("h1", None if rate == "none" else rate)
                        runs.setdefault((name, f"two hosts, {rate}"), {})[seed] = _train(
                            cluster, setup.config, sets, seed, Path(tmp) / f"{name}-2-{rate}-{seed}")
                for (setup_name, where), done in runs.items():
                    if setup_name == name:
                        print(f"seeds 0-{seed}: " + _row(name, where, done, runs), flush=True)   # medians so far
    print("\n| setup | where | steady env steps/s | x one host | x single | steady updates/s | "
          "bytes per update over h1's link | path (summary) | roles by host |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ["single", *args.setups]:
        for (setup_name, where), done in runs.items():
            if setup_name == name:
                print(_row(name, where, done, runs))


def _ratio(done: dict[int, dict], base: dict[int, dict] | None) -> float | None:
    pairs = [done[s]["steady_env_steps_per_s"] / base[s]["steady_env_steps_per_s"] for s in done if base and s in base]
    return statistics.median(pairs) if pairs else None


def _row(name: str, where: str, done: dict[int, dict], runs: dict) -> str:
    vs_one = _ratio(done, runs.get((name, "one host")))
    vs_single = _ratio(done, runs.get(("single", "one host"))) if name == "single" or SETUPS[name].cartpole else None
    per_update = [r["link_bytes"] / r["learner_updates"] for r in done.values() if r["learner_updates"]]
    last = done[max(done)]
    path = ", ".join(f"{k} {last[k]}" for k in ("transport", "backend", "hosts") if k in last)
    fmt = lambda x: "-" if x is None else f"{x:.2f}x"
    return (f"| {name} | {where} | {statistics.median(r['steady_env_steps_per_s'] for r in done.values()):,.0f} | "
            f"{fmt(vs_one)} | {fmt(vs_single)} | "
            f"{statistics.median(r['steady_updates_per_s'] for r in done.values()):,.0f} | "
            f"{statistics.median(per_update) / 1e3 if per_update else 0:,.1f} kB | {path or '-'} | {last['placement']} |")


if __name__ == "__main__":
    main()
