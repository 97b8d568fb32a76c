"""Do two busy cores slow each other here? The learner's update and the actor's env steps, each
alone, then side by side on separate cores.

    python -m benchmarks.core_contention [--config acrobot-apex] [--seconds 5]

Each role runs in a process of its own, pinned to a core, with one torch thread:
- learner: ``DQNLearner.step`` on batches of the config's size (apex's learner update);
- actor: ``Actor.collect(train.steps_per_collect)`` on the config's vector env (apex's actors);
- busy loop: a Python loop that touches no memory to speak of.
Each is timed alone, then the learner beside the actor, then the learner beside the busy loop.

If the cores themselves slowed each other (shared caches, memory bandwidth, clock), overlapping
acting with learning would gain less on this machine whatever the data path, and pinning would not
help; if they do not, what slows apex's learner in a run is other work on its core, which
``apex.isolate_learner`` keeps off. (Compare within one run of this script only: the machine's
speed drifts between runs.)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

from benchmarks.common import header


def _work(role: str, config: str, cpu: int, seconds: float, ready, start, results) -> None:
    import numpy as np
    import torch

    from distdqn.config import load_config
    from distdqn.core.transitions import Batch
    from distdqn.envs import env_info
    from distdqn.local import build

    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    cfg = load_config(config)
    info = env_info(cfg.env)
    if role == "learner":
        learner = build.build_learner(cfg, info)
        rng, n = np.random.default_rng(0), cfg.learner.batch_size
        obs = rng.standard_normal((n, *info.obs_shape)).astype(np.float32)
        batch = Batch(obs=obs, action=rng.integers(0, info.num_actions, n),
                      reward=rng.standard_normal(n).astype(np.float32), next_obs=obs[::-1].copy(),
                      terminated=rng.random(n) < 0.02, discount=np.full(n, 0.97, np.float32),
                      indices=np.arange(n), weights=rng.random(n).astype(np.float32))

        def unit() -> int:
            learner.step(batch)
            return 1
    elif role == "actor":
        network = build.build_network(cfg, info)
        actor = build.build_actor(cfg, info, {k: v.numpy() for k, v in network.state_dict().items()}, seed=0)

        def unit() -> int:
            return actor.collect(cfg.train.steps_per_collect, 0.1).env_steps
    else:
        def unit() -> int:
            x = 0
            for i in range(10_000):
                x += i
            return 1
    deadline = time.perf_counter() + 1.0          # warm up
    while time.perf_counter() < deadline:
        unit()
    ready.set()
    start.wait(60)
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        done += unit()
    results[role] = (time.perf_counter() - began) / done * 1e6   # us per update / env step / loop


def measure(roles: list[str], config: str, seconds: float) -> dict[str, float]:
    """Run ``roles`` at once, one pinned process each; us per unit of each."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results, start = manager.dict(), ctx.Event()
        readies = [ctx.Event() for _ in roles]
        cpus = sorted(os.sched_getaffinity(0))
        procs = [ctx.Process(target=_work, args=(role, config, cpus[i % len(cpus)], seconds, ready, start, results))
                 for i, (role, ready) in enumerate(zip(roles, readies, strict=True))]
        for p in procs:
            p.start()
        for ready in readies:
            if not ready.wait(120):
                raise TimeoutError("a benchmark process did not start within 120 s")
        start.set()
        for p in procs:
            p.join(seconds + 60)
            if p.exitcode != 0:
                raise RuntimeError(f"a benchmark process failed (exit {p.exitcode})")
        return dict(results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="acrobot-apex", help="YAML config file or preset name")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    from distdqn.config import load_config
    cfg = load_config(args.config)
    k = 1.0 / cfg.train.replay_ratio

    alone = {role: measure([role], args.config, args.seconds)[role] for role in ("learner", "actor")}
    together = measure(["learner", "actor"], args.config, args.seconds)
    beside_loop = measure(["learner", "busy"], args.config, args.seconds)

    print(header(f"Two busy cores: {cfg.env.id}, batch {cfg.learner.batch_size}, "
                 f"{cfg.env.num_envs} envs, replay ratio {cfg.train.replay_ratio:g}"))
    print("| role | alone | beside the other role | beside a busy loop |")
    print("|---|---|---|---|")
    print(f"| learner update (us) | {alone['learner']:,.0f} | {together['learner']:,.0f} "
          f"({together['learner'] / alone['learner']:.2f}x) | {beside_loop['learner']:,.0f} "
          f"({beside_loop['learner'] / alone['learner']:.2f}x) |")
    print(f"| actor, per env step (us) | {alone['actor']:,.1f} | {together['actor']:,.1f} "
          f"({together['actor'] / alone['actor']:.2f}x) | - |")
    print()
    print(f"Pinned to separate cores, the learner's update is {together['learner'] / alone['learner']:.2f}x "
          f"its time alone beside the actor and {beside_loop['learner'] / alone['learner']:.2f}x beside a "
          f"busy loop; the actor's env step {together['actor'] / alone['actor']:.2f}x. Per learner update "
          f"({k:g} env steps) the two roles cost {alone['learner']:,.0f} us and {k * alone['actor']:,.0f} us.")

if __name__ == "__main__":
    main()
