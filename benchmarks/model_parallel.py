"""learner.model_parallel: learner updates per second against width, split over two ranks or not.

    python -m benchmarks.model_parallel [--widths 256 1024 4096 8192] [--batches 64 256] [--seconds 1.5]

For each 2xW MLP (64 inputs, 8 actions, Double DQN, Adam, hard target updates) and batch size,
in this run:
- P=1, 1 thread: ``DQNLearner.step`` as ``single`` runs it (default kernel), one torch thread;
- P=1, 2 threads: the same with two torch threads;
- P=2, 1 thread each: the learner split over this process and one local process
  (local/model_parallel.py, as ``single`` with ``learner.model_parallel=2``).
Each update includes sending the batch to rank 1. "all-reduce share" is the part of rank 0's update
time spent in its all-reduces (waiting for rank 1 included): the rest is compute. "state per rank"
is the learner's parameters, their gradients, the target network and Adam's two moments on one rank.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import header
from distdqn.config import config_from_dict
from distdqn.core.transitions import Batch
from distdqn.envs import EnvInfo
from distdqn.local import build
from distdqn.local.model_parallel import split_locally

INFO = EnvInfo("bench", (64,), np.dtype(np.float32), 8, None)


def batches(size: int, count: int = 8) -> list[Batch]:
    rng = np.random.default_rng(0)
    return [Batch(obs=rng.normal(size=(size, 64)).astype(np.float32), action=rng.integers(0, 8, size),
                  reward=rng.normal(size=size).astype(np.float32),
                  next_obs=rng.normal(size=(size, 64)).astype(np.float32), terminated=rng.random(size) < 0.1,
                  discount=np.full(size, 0.97, np.float32), indices=np.arange(size),
                  weights=np.ones(size, np.float32)) for _ in range(count)]


def rate(learner, data: list[Batch], seconds: float) -> tuple[float, int]:
    """Updates per second (after one warm-up update; at least 3 timed)."""
    learner.step(data[0])
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        learner.step(data[n % len(data)])
        n += 1
    return n / (time.perf_counter() - start), n


def state_mb(num_params: int) -> float:
    return 5 * 4 * num_params / 2**20   # online, gradient, target, Adam m and v; float32


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()
    print(header("Model parallelism: learner updates/s against width (learner.model_parallel)"))
    print("| network, batch | P=1, 1 thread | P=1, 2 threads | P=2, 1 thread each | P=2 / P=1 1 thread "
          "| P=2 / P=1 2 threads | P=2 all-reduce share | state per rank, P=1 / P=2 |")
    print("|---|---|---|---|---|---|---|---|")
    for width in args.widths:
        cfg = config_from_dict({"network": {"hidden_sizes": [width, width]},
                                "learner": {"model_parallel": 2, "batch_size": 64}})
        torch.manual_seed(0)
        full = build.build_learner(cfg.model_copy(update={"learner": cfg.learner.model_copy(
            update={"model_parallel": 1})}), INFO)
        num_params = full.flat_params.numel()
        unsplit = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for size in args.batches:
                unsplit[threads, size] = rate(full, batches(size), args.seconds)[0]
        torch.set_num_threads(1)
        two = split_locally(full, cfg, INFO, threads=1)
        local_params = two.shard.flat_params.numel()
        try:
            for size in args.batches:
                data = batches(size)
                two.step(data[0])
                reduce_before, start = two.comm.all_reduce_s, time.perf_counter()
                split, _ = rate(two, data, args.seconds)
                share = (two.comm.all_reduce_s - reduce_before) / (time.perf_counter() - start)
                one1, one2 = unsplit[1, size], unsplit[2, size]
                print(f"| 2x{width} MLP, batch {size} | {one1:.1f} | {one2:.1f} | {split:.1f} | "
                      f"{split / one1:.2f}x | {split / one2:.2f}x | {share:.0%} | "
                      f"{state_mb(num_params):.0f} / {state_mb(local_params):.0f} MB |", flush=True)
        finally:
            two.close()


if __name__ == "__main__":
    main()
