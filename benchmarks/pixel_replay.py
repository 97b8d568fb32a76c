"""The Atari replay: memory per transition and the time to sample a batch, frames stored once
against whole stacks.

    python -m benchmarks.pixel_replay [--capacity 100000] [--envs 8]

The replay is filled to capacity with real Breakout frames: the Actor (n-step 3, random Q-values)
on ale-py's vector env with the project's Atari conventions, so episode starts, lost lives and
n-step windows come as in training. Memory: the resident memory (VmRSS) the filling added, and
the storage's own count of bytes in use; both per transition, then x 1M. Full storage is computed,
not allocated (two [4, 84, 84] uint8 stacks and the scalars per transition). Sampling: a batch of
32 (the Nature setting) and of 256, uniform and prioritized, median of 500 draws each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import header
from distdqn.config import load_config
from distdqn.core.actor import Actor
from distdqn.core.replay import make_replay
from distdqn.envs import make_vector_env

OBS_SHAPE = (4, 84, 84)


class RandomQ:
    def __init__(self, num_actions: int):
        self.num_actions, self.rng = num_actions, np.random.default_rng(0)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.random((len(obs), self.num_actions))


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def sample_us(replay, batch_size: int, draws: int = 500) -> float:
    times = []
    for _ in range(draws):
        start = time.perf_counter()
        batch = replay.sample(batch_size, beta=0.4)
        times.append(time.perf_counter() - start)
        if replay.storage != "full":
            replay.update_priorities(batch.indices, np.abs(batch.reward) + 0.1)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--envs", type=int, default=8)
    args = parser.parse_args()
    cfg = load_config(None, ["env.id=ALE/Breakout-v5"])
    env = make_vector_env(cfg.env, args.envs)
    actor = Actor(env, RandomQ(int(env.single_action_space.n)), n_step=3, gamma=0.99, seed=0)
    warm = make_replay(True, 1000, OBS_SHAPE, np.uint8, seed=0, storage="frames")
    for _ in range(8):                      # the env's, the actor's and NumPy's first allocations
        warm.add(actor.collect(32, 0.0).transitions)
    del warm
    replays = {}
    for prioritized in (False, True):
        before = resident_bytes()
        replay = make_replay(prioritized, args.capacity, OBS_SHAPE, np.uint8, seed=0, storage="frames")
        fill_start = time.perf_counter()
        add_s = 0.0
        while replay.total_added < args.capacity:
            transitions = actor.collect(32, 0.0).transitions
            start = time.perf_counter()
            replay.add(transitions)
            add_s += time.perf_counter() - start
        replays[prioritized] = (replay, resident_bytes() - before, replay.total_added, add_s,
                                time.perf_counter() - fill_start)
    env.close()

    full_per_transition = 2 * int(np.prod(OBS_SHAPE)) + 8 + 4 + 1 + 4    # stacks, action, reward, ...
    print(header("Atari replay: frames stored once"))
    print(f"Filled with {args.capacity:,} n-step transitions of Breakout-v5 ({args.envs} envs).\n")
    print("| replay | resident memory added | per transition | x 1M transitions | frames stored / transitions | add, per transition |")
    print("|---|---|---|---|---|---|")
    for prioritized, (replay, rss, added, add_s, _) in replays.items():
        per = rss / args.capacity
        storage = replay._observations
        print(f"| frames, {'prioritized' if prioritized else 'uniform'} | {rss / 2**20:,.0f} MiB "
              f"(storage counts {storage.nbytes() / 2**20:,.0f} MiB) | {per:,.0f} B | "
              f"**{per * 1e6 / 2**30:.2f} GiB** | {storage.frames_stored / len(replay):.3f} | "
              f"{add_s / added * 1e6:.1f} us |")
    print(f"| full (computed) | - | {full_per_transition:,} B | {full_per_transition * 1e6 / 2**30:.1f} GiB | 8 | - |")
    print()
    small = make_replay(False, 20_000, OBS_SHAPE, np.uint8, seed=0, storage="full")
    source = replays[False][0]
    for start in range(0, 20_000, 1000):
        batch = source._gather(np.arange(start, start + 1000), np.ones(1000, np.float32))
        small.add(batch)
    print("| sampling (median of 500) | batch 32 | batch 256 |")
    print("|---|---|---|")
    for label, replay in (("frames, uniform", replays[False][0]), ("frames, prioritized", replays[True][0]),
                          ("full, uniform (20k transitions)", small)):
        print(f"| {label} | **{sample_us(replay, 32):,.0f} us** | {sample_us(replay, 256):,.0f} us |")


if __name__ == "__main__":
    main()
