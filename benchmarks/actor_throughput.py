"""Actor throughput with the policy in the loop, as a ratio to the raw vector-env step rate.

    python benchmarks/actor_throughput.py [--config cartpole] [--seconds 3] [--rounds 5]

Both are measured in this one process, alternating, on the same kind of vector env:
- raw: ``env.step(random actions)`` in a loop (actions drawn with NumPy);
- actor: ``Actor.collect`` with the config's network (untrained weights), epsilon-greedy, storing
  n-step transitions exactly as training does (``train.steps_per_collect`` vector steps per call).
The ratio of env steps/s (actor / raw) is the figure; the issue asks for at least 0.7.
It also times the policy's forward pass alone for one vector of observations: the NumPy MLP policy
the actor uses vs the same network as a torch module (``TorchPolicy``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from benchmarks.common import header
from distdqn.config import load_config
from distdqn.core.policy import NumpyMLPPolicy, TorchPolicy
from distdqn.envs import env_info, make_vector_env
from distdqn.local.build import build_actor, build_network


def raw_rate(cfg, seconds: float) -> float:
    env = make_vector_env(cfg.env, cfg.env.num_envs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n = env.num_envs
    num_actions = int(env.single_action_space.n)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            env.step(rng.integers(0, num_actions, size=n))
        steps += 100 * n
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def actor_rate(cfg, info, seconds: float) -> float:
    weights = {k: v.numpy() for k, v in build_network(cfg, info).state_dict().items()}
    actor = build_actor(cfg, info, weights, seed=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(25):
            steps += actor.collect(cfg.train.steps_per_collect, 0.1).env_steps
    rate = steps / (time.perf_counter() - start)
    actor.env.close()
    return rate


def forward_us(policy, obs: np.ndarray, repeats: int = 5000) -> float:
    for _ in range(200):
        policy.q_values(obs)
    start = time.perf_counter()
    for _ in range(repeats):
        policy.q_values(obs)
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None,
                        help="YAML config file or preset name; default: none (the defaults: cartpole)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, args.overrides)
    info = env_info(cfg.env)
    raws, actors = [], []
    for _ in range(args.rounds):
        raws.append(raw_rate(cfg, args.seconds))
        actors.append(actor_rate(cfg, info, args.seconds))
    ratios = [a / r for a, r in zip(actors, raws)]
    network = build_network(cfg, info)
    obs = np.random.default_rng(0).standard_normal((cfg.env.num_envs, *info.obs_shape)).astype(np.float32)
    weights = {k: v.numpy() for k, v in network.state_dict().items()}
    numpy_us = statistics.median(forward_us(NumpyMLPPolicy(weights, cfg.network.dueling), obs) for _ in range(3))
    torch_us = statistics.median(forward_us(TorchPolicy(network), obs) for _ in range(3))
    print(header(f"Actor throughput: {cfg.env.id}, {cfg.env.num_envs} envs ({cfg.env.vectorization})"))
    print("| | env steps/s (median of rounds) |\n|---|---|")
    print(f"| raw vector env, random actions | {statistics.median(raws):,.0f} |")
    print(f"| Actor.collect, {cfg.network.kind} {cfg.network.hidden_sizes} policy, n-step {cfg.replay.n_step} "
          f"| {statistics.median(actors):,.0f} |")
    print(f"\npolicy forward for {cfg.env.num_envs} observations: NumPy {numpy_us:.1f} us, "
          f"torch module {torch_us:.1f} us ({torch_us / numpy_us:.1f}x)")
    print(f"ratio actor/raw: median {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
