"""Nature-CNN learner updates per second: plain PyTorch against distdqn's learner and the levers
that might make it faster (channels-last memory format, ``torch.compile``, bigger batches).

    python -m benchmarks.cnn_learner [--seconds 3] [--rounds 3] [--threads 2] [--device cpu]

Batches are [B, 4, 84, 84] uint8 frames (as the frame replay returns them), 6 actions (Pong).
Every variant does the same Double-DQN update (Huber loss, clipping at 10, Adam) and includes the
uint8 -> float conversion and the copy of the batch to the device; rounds alternate variants.
Figures: updates/s and transitions/s (updates x batch), median over rounds.
"""

from __future__ import annotations

import argparse
import copy
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

OBS_SHAPE, NUM_ACTIONS = (4, 84, 84), 6


def make_batch(batch_size: int, rng: np.random.Generator) -> Batch:
    return Batch(obs=rng.integers(0, 256, (batch_size, *OBS_SHAPE), dtype=np.uint8),
                 action=rng.integers(0, NUM_ACTIONS, batch_size),
                 reward=rng.standard_normal(batch_size).astype(np.float32),
                 next_obs=rng.integers(0, 256, (batch_size, *OBS_SHAPE), dtype=np.uint8),
                 terminated=rng.random(batch_size) < 0.05,
                 discount=np.full(batch_size, 0.99 ** 3, np.float32),
                 indices=np.arange(batch_size), weights=np.ones(batch_size, np.float32))


def plain_update_fn(batch: Batch, device: torch.device, channels_last: bool = False, compiled: bool = False):
    """The textbook update (CleanRL's dqn_atari): nn.Sequential, torch.optim.Adam."""
    net = nn.Sequential(
        nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(),
        nn.Linear(512, NUM_ACTIONS)).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    target = copy.deepcopy(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def loss_fn(obs, action, reward, next_obs, terminated, discount):
        obs = (obs.float() / 255.0).contiguous(memory_format=memory_format)
        next_obs = (next_obs.float() / 255.0).contiguous(memory_format=memory_format)
        q = net(obs).gather(1, action[:, None]).squeeze(1)
        with torch.no_grad():
            next_action = net(next_obs).argmax(1, keepdim=True)
            next_q = target(next_obs).gather(1, next_action).squeeze(1)
            y = reward + discount * (~terminated).float() * next_q
        return F.smooth_l1_loss(q, y), (q - y).abs().detach()

    step = torch.compile(loss_fn) if compiled else loss_fn

    def update():
        tensors = [torch.from_numpy(a).to(device) for a in (batch.obs, batch.action, batch.reward,
                                                             batch.next_obs, batch.terminated, batch.discount)]
        loss, td = step(*tensors)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        optimizer.step()
        return td.cpu().numpy()
    return update


def learner_update_fn(batch: Batch, device: str):
    learner = DQNLearner(build_q_network("nature_cnn", OBS_SHAPE, NUM_ACTIONS, [512]),
                         LearnerConfig(kernel="autograd", device=device, lr=1e-4))
    return lambda: learner.step(batch)


def rate(fn, seconds: float, sync) -> float:
    for _ in range(3):
        fn()
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    sync()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--compile", action="store_true", help="also torch.compile (slow to start)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    print(header(f"Nature-CNN learner updates per second ({args.device}, {args.threads} torch threads)"))
    print("| batch | variant | updates/s | transitions/s | vs plain |")
    print("|---|---|---|---|---|")
    for batch_size in args.batches:
        batch = make_batch(batch_size, rng)
        fns = {"plain PyTorch": plain_update_fn(batch, device),
               "distdqn learner": learner_update_fn(batch, args.device),
               "plain, channels-last": plain_update_fn(batch, device, channels_last=True)}
        if args.compile:
            fns["plain, torch.compile"] = plain_update_fn(batch, device, compiled=True)
        rates: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for key, fn in fns.items():
                rates[key].append(rate(fn, args.seconds, sync))
        plain = statistics.median(rates["plain PyTorch"])
        for key, values in rates.items():
            med = statistics.median(values)
            print(f"| {batch_size} | {key} | {med:,.1f} | {med * batch_size:,.0f} | {med / plain:.2f}x |")


if __name__ == "__main__":
    main()
