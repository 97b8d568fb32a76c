"""What a sync_ps round over Ray calls costs, step by step, on a local Ray instance (the update
channel's transport ``ray``, runtime/updates/ray_calls.py): the figures behind its choice of the
object store for weights.

    python -m benchmarks.ps_round [--rounds 500] [--workers 2]

Each round is what sync_ps (gradient form) does: box the server's weights, call every
PSWorker's ``push``, wait for all, average, apply. Timed per step over ``--rounds`` rounds
(after 100 warm-up rounds), once with the weights put into the object store (what sync_ps does)
and once passed inside each call. Also: a bare Ray actor round trip, with and without the weights.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray
import torch

from benchmarks.common import header
from distdqn.config import load_config
from distdqn.core.learner import DQNLearner
from distdqn.envs import env_info
from distdqn.local import build
from distdqn.local.replica import Replica
from distdqn.runtime.cluster import connect
from distdqn.runtime.messages import Weights
from distdqn.runtime.pool import RolePool
from distdqn.runtime.roles.ps_worker import PSWorker
from distdqn.runtime.weights import PushedWeights


@ray.remote
class Echo:
    def back(self, x):
        return x


def per_call_ms(fn, n: int = 300) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def rounds(pool: RolePool, learner: DQNLearner, n: int, inline: bool) -> dict[str, float]:
    steps = {"box": 0.0, "calls": 0.0, "get": 0.0, "mean": 0.0, "apply": 0.0}
    held_target = [-1] * pool.count
    pushed = PushedWeights()
    for r in range(n + 100):
        t0 = time.perf_counter()
        boxes = []
        if inline:   # the weights themselves inside each call, not a reference (no put)
            online, target = learner.get_weights(), learner.get_target_weights()
        for i in range(pool.count):
            if inline:
                version = learner.target_version
                box = Weights(learner.updates, [online], version, [target] if held_target[i] != version else [])
                held_target[i] = version
            else:
                box = pushed.weights_for(i, learner)
            boxes.append(box)
        t1 = time.perf_counter()
        refs = [h.push.remote(b, True) for h, b in zip(pool.handles, boxes, strict=True)]
        ray.wait(refs, num_returns=len(refs), timeout=60)
        t2 = time.perf_counter()
        outs = ray.get(refs, timeout=60)
        t3 = time.perf_counter()
        mean = np.mean([o.vector for o in outs], axis=0)
        t4 = time.perf_counter()
        learner.apply_gradient(mean)
        t5 = time.perf_counter()
        if r >= 100:
            for key, a, b in (("box", t0, t1), ("calls", t1, t2), ("get", t2, t3), ("mean", t3, t4), ("apply", t4, t5)):
                steps[key] += b - a
    return {k: v / n * 1e3 for k, v in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, ["topology=sync_ps", f"workers.num_workers={args.workers}"])
    info = env_info(cfg.env)
    cluster = connect(None, num_cpus=args.workers)
    try:
        print(header(f"A sync_ps round, step by step ({args.workers} workers, CartPole 2x128 MLP, "
                     f"{args.rounds} rounds)"))
        learner = build.build_learner(cfg, info)
        w = cfg.workers
        pool = RolePool("worker", PSWorker, w.num_workers, cfg.seed,
                        lambda i, seed: (cfg, info, i, w.num_workers, seed, w.cpus), {"num_cpus": w.cpus})
        pool.identities()
        weights = learner.get_weights()
        replica = Replica(cfg, info, 0, args.workers, cfg.seed)   # in this process: the compute alone
        for _ in range(300):
            replica.flat_gradient()
        print(f"- one worker's gradient in-process (collection included, no Ray): "
              f"{per_call_ms(replica.flat_gradient, 1000):.2f} ms")
        echo = Echo.remote()
        print(f"- bare actor round trip: {per_call_ms(lambda: ray.get(echo.back.remote(1), timeout=60)):.2f} ms; "
              f"with the weights ({sum(v.nbytes for v in weights.values()) / 1e3:.0f} KB) as argument and "
              f"result: {per_call_ms(lambda: ray.get(echo.back.remote(weights), timeout=60)):.2f} ms\n")
        print("| weights travel | box (put) | workers' calls | get answers | mean | apply (Adam) | round |")
        print("|---|---|---|---|---|---|---|")
        for inline in (False, True):
            t = rounds(pool, learner, args.rounds, inline)
            how = "inside each call" if inline else "object store, put once (sync_ps)"
            print(f"| {how} | {t['box']:.2f} ms | {t['calls']:.2f} ms | {t['get']:.2f} ms | {t['mean']:.2f} ms | "
                  f"{t['apply']:.2f} ms | **{sum(t.values()):.2f} ms** |", flush=True)
        pool.shutdown()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
