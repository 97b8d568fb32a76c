"""apex's learners alone: updates/s of 1 learner against a group of 2, where the replay never
holds them back (shards filled beforehand, the ratio's allowance far ahead): what a second
learner buys once the actors are not the limit.

    python -m benchmarks.learner_group [--config cartpole-apex] [--batch-sizes 64 256]
                                       [--updates 2048] [--repeats 2] [--set key=value ...]

Setups, each started on a fresh local Ray instance, in turn (A B B A ... with --repeats):
- 1 learner, its replay hosted in its process (apex's default);
- 1 learner, 1 ReplayServer (replay_host=process);
- 2 learners (a group averaging through shared memory), 1 shard;
- 2 learners, 2 shards.
Every learner runs with ``apex.isolate_learner`` as configured (on 2 cores a group of 2 gets no
cores of its own: each would leave nothing for the rest). Figures: updates/s over the timed
calls (after one warm-up call), learner 0's share of the time in the group's exchanges, and the
cores the learners' processes used meanwhile (their CPU time / the wall time, from /proc).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import ray

from benchmarks.common import header
from distdqn.config import load_config
from distdqn.core.transitions import Transitions
from distdqn.envs import env_info
from distdqn.runtime import group, learner_group, shards
from distdqn.runtime.cluster import connect
from distdqn.runtime.roles.learner import LearnerWorker
from distdqn.runtime.roles.replay_server import ReplayServer

FILL = 20_000   # transitions in the replay (over its shards)


def transitions(rng: np.random.Generator, n: int, obs_dim: int) -> Transitions:
    return Transitions(obs=rng.normal(size=(n, obs_dim)).astype(np.float32), action=rng.integers(0, 2, n),
                       reward=rng.normal(size=n).astype(np.float32),
                       next_obs=rng.normal(size=(n, obs_dim)).astype(np.float32),
                       terminated=rng.random(n) < 0.05, discount=np.full(n, 0.97, np.float32))


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` so far (Linux /proc; clock ticks of 1/100 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def measure(cfg_name: str, overrides: list[str], learners: int, num_shards: int, hosted: bool,
            updates: int) -> tuple[float, float, float]:
    """(updates/s, learner 0's exchange share, cores the learners used) of one setup on a fresh
    local Ray instance."""
    extra = [f"apex.num_learners={learners}", f"apex.replay_shards={num_shards}",
             f"apex.replay_host={'learner' if hosted else 'process'}", "train.learning_starts=1000",
             f"train.replay_ratio={4 * updates / FILL:g}", "apex.updates_per_call=256"]
    cfg = load_config(cfg_name, [*overrides, *extra])
    info = env_info(cfg.env)
    rng = np.random.default_rng(0)
    cluster = connect(None, num_cpus=8)
    spec = None
    try:
        sharded = learners > 1 or num_shards > 1
        replays = (shards.start_shards(cfg, info, [None] * num_shards) if sharded else
                   [] if hosted else [ReplayServer.options(num_cpus=0).remote(cfg, info, 1)])
        handles = [LearnerWorker.options(num_cpus=0).remote(cfg, info, replays or None, 3 + 1000 * r, r, learners)
                   for r in range(learners)]
        if cfg.apex.isolate_learner:
            ray.get([h.isolate.remote(1, r, learners) for r, h in enumerate(handles)], timeout=120)
        if learners > 1:
            spec = group.form_group(handles, "auto", False, 120, "apex.group_backend", "the benchmark's learners")
            first = ray.get(handles[0].state_dict.remote(), timeout=120)
            ray.get([h.load_state_dict.remote(first) for h in handles[1:]], timeout=120)
        for k, replay in enumerate(replays or handles[:1]):
            n = FILL // max(1, len(replays))
            ray.get(replay.add.remote(transitions(rng, n, info.obs_shape[0]), np.abs(rng.normal(size=n)) + 0.1, n),
                    timeout=120)
        env_steps = FILL
        calls = max(1, updates // cfg.apex.updates_per_call)
        ray.get([h.train.remote(cfg.apex.updates_per_call, env_steps) for h in handles], timeout=300)   # warm-up
        pids = [p["pid"] for p in ray.get([h.identity.remote() for h in handles], timeout=120)]
        cpu_before = [cpu_seconds(pid) for pid in pids]
        start, done, exchanged = time.perf_counter(), 0, 0.0
        for _ in range(calls):
            reports = ray.get([h.train.remote(cfg.apex.updates_per_call, env_steps) for h in handles], timeout=300)
            done += reports[0].updates.count
            exchanged += reports[0].exchange_s
        wall = time.perf_counter() - start
        cores = sum(cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)) / wall
        if learners > 1:
            hashes = ray.get([h.weights_hash.remote() for h in handles], timeout=120)
            assert len(set(hashes)) == 1, hashes
            ray.get([h.leave_group.remote() for h in handles], timeout=120)
        return done / wall, exchanged / wall, cores
    finally:
        learner_group.remove(spec)
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="cartpole-apex")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--updates", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value, for every run")
    args = parser.parse_args()
    setups = [("1 learner, replay in its process", 1, 1, True), ("1 learner, 1 replay server", 1, 1, False),
              ("2 learners, 1 shard", 2, 1, False), ("2 learners, 2 shards", 2, 2, False)]
    print(header(f"apex's learners alone ({args.config}, {args.updates} updates, {', '.join(args.overrides) or '-'})"))
    print("| batch | setup | updates/s, median [runs] | x 1 learner (hosted) | exchange share | learners' cores |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name, *_ in setups}
        for repeat in range(args.repeats):   # A B C D, then D C B A: drift over minutes cancels out
            for name, learners, num_shards, hosted in (setups if repeat % 2 == 0 else setups[::-1]):
                runs[name].append(measure(args.config, [*args.overrides, f"learner.batch_size={batch}"], learners,
                                          num_shards, hosted, args.updates))
        base = statistics.median(r for r, _, _ in runs[setups[0][0]])
        for name, *_ in setups:
            rates = [r for r, _, _ in runs[name]]
            print(f"| {batch} | {name} | {statistics.median(rates):,.0f} [{', '.join(f'{r:,.0f}' for r in rates)}] | "
                  f"{statistics.median(rates) / base:.2f}x | {statistics.median(e for _, e, _ in runs[name]):.0%} | "
                  f"{statistics.median(c for _, _, c in runs[name]):.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
