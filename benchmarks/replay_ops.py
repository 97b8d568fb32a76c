"""Prioritized replay operations, one process: what a learner pays per sample and per priority update.

    python -m benchmarks.replay_ops [--capacity 100000] [--repeats 400]

A PrioritizedReplay of ``capacity`` CartPole-sized rows, filled with 512-row inserts carrying
priorities (as apex actors send them), then timed (best of 3 rounds, microseconds per call):
- sample(64) and update_priorities(64), and the two in turn: what `single` pays per learner update
  (a sample right after an update also pays for refreshing the tree's cached block sums);
- sample_stacked(16, 64) and update_priorities(1024): what apex's learner pays per group of 16;
- add(512) with priorities: what the replay's host pays per actor insert.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import header
from distdqn.core.replay import make_replay
from distdqn.core.transitions import Transitions


def best_us(fn, repeats: int) -> float:
    rounds = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        rounds.append((time.perf_counter() - start) / repeats * 1e6)
    return min(rounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=400)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    replay = make_replay(True, args.capacity, (4,), np.float32, seed=0)
    n = 512
    rows = Transitions(obs=rng.standard_normal((n, 4)).astype(np.float32), action=rng.integers(0, 2, n),
                       reward=np.ones(n, np.float32), next_obs=rng.standard_normal((n, 4)).astype(np.float32),
                       terminated=rng.random(n) < 0.02, discount=np.full(n, 0.97, np.float32))
    for _ in range(args.capacity // n + 1):
        replay.add(rows, np.abs(rng.standard_normal(n)))
    one, group = replay.sample(64, 0.5), replay.sample_stacked(16, 64, 0.5)
    td_one, td_group = rng.standard_normal(64), rng.standard_normal(1024)
    cases = [
        ("sample(64)", lambda: replay.sample(64, 0.5)),
        ("update_priorities(64)", lambda: replay.update_priorities(one.indices, td_one)),
        ("update_priorities(64), then sample(64)",
         lambda: (replay.update_priorities(one.indices, td_one), replay.sample(64, 0.5))),
        ("sample_stacked(16, 64)", lambda: replay.sample_stacked(16, 64, 0.5)),
        ("update_priorities(1024)", lambda: replay.update_priorities(group.indices.reshape(-1), td_group)),
        ("add(512) with priorities", lambda: replay.add(rows, np.abs(td_group[:n]))),
    ]
    print(header(f"Prioritized replay operations (capacity {args.capacity:,}, CartPole rows)"))
    print("| operation | us per call (best of 3 rounds) |")
    print("|---|---|")
    for name, fn in cases:
        print(f"| {name} | {best_us(fn, args.repeats):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
