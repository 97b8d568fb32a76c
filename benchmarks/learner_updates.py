"""Learner updates per second: plain PyTorch vs distdqn's learner, beside the time of the matmuls alone.

    python benchmarks/learner_updates.py [--seconds 2] [--rounds 5]

One torch thread. For each (network, batch) case, in one process and alternating rounds:
- plain PyTorch: the textbook Double-DQN update (nn.Sequential, two forward passes on s' under
  no_grad, Huber loss, ``backward``, ``clip_grad_norm_``, ``torch.optim.Adam().step()``);
- distdqn autograd: ``DQNLearner.step`` with ``learner.kernel=autograd``;
- distdqn fused_mlp: ``DQNLearner.step`` with the hand-derived forward/backward (the default);
- matmuls alone: the matrix products one Double-DQN update needs (online forward on s and s',
  target forward on s', weight and input gradients), with nothing else: the arithmetic floor.
Each learner step includes converting the NumPy batch to tensors and returning NumPy priorities.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import header
from distdqn.config import LearnerConfig
from distdqn.core.learner import DQNLearner
from distdqn.core.networks import build_q_network
from distdqn.core.transitions import Batch

OBS_DIM, NUM_ACTIONS = 8, 4   # LunarLander-sized


def make_batch(batch_size: int, rng: np.random.Generator) -> Batch:
    return Batch(obs=rng.standard_normal((batch_size, OBS_DIM)).astype(np.float32),
                 action=rng.integers(0, NUM_ACTIONS, batch_size),
                 reward=rng.standard_normal(batch_size).astype(np.float32),
                 next_obs=rng.standard_normal((batch_size, OBS_DIM)).astype(np.float32),
                 terminated=rng.random(batch_size) < 0.05,
                 discount=np.full(batch_size, 0.99 ** 3, np.float32),
                 indices=np.arange(batch_size), weights=np.ones(batch_size, np.float32))


def plain_update_fn(hidden: int, batch: Batch):
    net = nn.Sequential(nn.Linear(OBS_DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                        nn.Linear(hidden, NUM_ACTIONS))
    target = copy.deepcopy(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def update():
        obs, action = torch.from_numpy(batch.obs), torch.from_numpy(batch.action)
        reward, next_obs = torch.from_numpy(batch.reward), torch.from_numpy(batch.next_obs)
        terminated, discount = torch.from_numpy(batch.terminated), torch.from_numpy(batch.discount)
        q = net(obs).gather(1, action[:, None]).squeeze(1)
        with torch.no_grad():
            next_action = net(next_obs).argmax(1, keepdim=True)
            next_q = target(next_obs).gather(1, next_action).squeeze(1)
            y = reward + discount * (~terminated).float() * next_q
        loss = F.smooth_l1_loss(q, y)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        optimizer.step()
        return (q - y).abs().detach().numpy()
    return update


def learner_update_fn(hidden: int, batch: Batch, kernel: str):
    learner = DQNLearner(build_q_network("mlp", (OBS_DIM,), NUM_ACTIONS, [hidden, hidden]),
                         LearnerConfig(kernel=kernel))
    return lambda: learner.step(batch)


def matmul_fn(hidden: int, batch_size: int):
    sizes = [OBS_DIM, hidden, hidden, NUM_ACTIONS]
    weights = [torch.randn(o, i) * 0.1 for i, o in itertools.pairwise(sizes)]
    both, next_obs = torch.randn(2 * batch_size, OBS_DIM), torch.randn(batch_size, OBS_DIM)
    grad_q = torch.randn(batch_size, NUM_ACTIONS)

    def products():
        acts = [both]
        x = both
        for w in weights:
            x = x @ w.t()
            acts.append(x)
        x = next_obs
        for w in weights:
            x = x @ w.t()
        g = grad_q
        for i in range(len(weights) - 1, -1, -1):
            g.t() @ acts[i][:batch_size]
            if i > 0:
                g = g @ weights[i]
    return products


def rate(fn, seconds: float) -> float:
    for _ in range(50):
        fn()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            fn()
        count += 50
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(header("Learner updates per second (one torch thread)"))
    print("| network, batch | plain PyTorch | distdqn autograd | distdqn fused_mlp (default) | "
          "matmuls alone | fused vs plain |")
    print("|---|---|---|---|---|---|")
    for hidden, batch_size in ((128, 64), (256, 128)):
        batch = make_batch(batch_size, rng)
        fns = {"plain": plain_update_fn(hidden, batch),
               "autograd": learner_update_fn(hidden, batch, "autograd"),
               "fused": learner_update_fn(hidden, batch, "fused_mlp"),
               "matmul": matmul_fn(hidden, batch_size)}
        rates: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for key, fn in fns.items():
                rates[key].append(rate(fn, args.seconds / 4))
        med = {k: statistics.median(v) for k, v in rates.items()}
        ratios = [f / p for f, p in zip(rates["fused"], rates["plain"])]
        cell = lambda k, med=med: f"{med[k]:,.0f}/s ({1e6 / med[k]:.0f} us)"
        print(f"| 2x{hidden} MLP, batch {batch_size} | {cell('plain')} | {cell('autograd')} | "
              f"{cell('fused')} | {cell('matmul')} | {statistics.median(ratios):.2f}x |")


if __name__ == "__main__":
    main()
