"""Env steps/s on pixels with the CNN policy in the loop: the actor alone, then whole training runs
(`single`, apex with 1, 2 and 4 actors) on Atari Pong-v5.

    python -m benchmarks.pixel_throughput [--seconds 5] [--steps 6000] [--actors 1 2 4]

Actor alone: ``Actor.collect`` (epsilon 0.05, n-step 3) with the Nature CNN's torch policy, one
torch thread, beside the raw vector env with random actions; MinAtar Breakout-v1 with the MinAtar
CNN likewise. Training runs: the ``atari-pong`` preset for ``--steps`` env steps (learning from
1,000), steady rates between the first and last log rows (start-up and the final evaluation left
out); apex with ``apex.actor_cpus`` = 1 / actors and ``apex.isolate_learner=false`` (a shared
machine). One run each, in one sitting: compare within the table, not with other days.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import header
from distdqn.config import load_config
from distdqn.envs import env_info, make_vector_env
from distdqn.local import build


def actor_rate(preset: str, seconds: float) -> tuple[float, float]:
    cfg = load_config(preset)
    info = env_info(cfg.env)
    env = make_vector_env(cfg.env, cfg.env.num_envs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(rng.integers(0, info.num_actions, size=cfg.env.num_envs))
        count += cfg.env.num_envs
    raw = count / (time.perf_counter() - start)
    env.close()
    learner = build.build_learner(cfg, info)
    actor = build.build_actor(cfg, info, learner.get_weights(), seed=0)
    actor.collect(4, 0.05)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += actor.collect(4, 0.05).env_steps
    rate = count / (time.perf_counter() - start)
    actor.env.close()
    return raw, rate


def train_rates(overrides: list[str], steps: int, root: Path) -> tuple[float, float]:
    run_dir = root / f"run{len(list(root.iterdir()))}"
    cmd = [sys.executable, "-m", "distdqn.cli", "train", "atari-pong", "--run-dir", str(run_dir),
           "--set", f"train.total_env_steps={steps}", "--set", "train.learning_starts=1000",
           "--set", "replay.capacity=20000", "--set", "eval.interval_env_steps=1000000",
           "--set", "eval.episodes=10", "--set", "env.atari.max_episode_frames=400",
           "--set", f"log.interval_env_steps={max(500, steps // 10)}", "--set", "log.progress=false",
           "--set", "learner.device=cpu", "--set", "checkpoint.save_replay=false"]
    for o in overrides:
        cmd += ["--set", o]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "env_steps" in r and r.get("learner_updates", 0) > 0]
    first, last = rows[0], rows[-1]
    span = last["wall_s"] - first["wall_s"]
    return ((last["env_steps"] - first["env_steps"]) / span,
            (last["learner_updates"] - first["learner_updates"]) / span)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(header("Pixels: env steps/s with the CNN policy in the loop"))
    print("| actor alone (1 torch thread) | raw vector env, random actions | actor with the CNN policy |")
    print("|---|---|---|")
    for preset, label in (("atari-pong", "Pong-v5, 8 envs, Nature CNN"),
                          ("minatar-breakout", "MinAtar Breakout-v1, 8 envs, MinAtar CNN")):
        raw, rate = actor_rate(preset, args.seconds)
        print(f"| {label} | {raw:,.0f} | {rate:,.0f} ({rate / raw:.2f}) |", flush=True)
    print(f"\n| Pong-v5 training, {args.steps:,} env steps, replay ratio 0.25 | env steps/s | learner updates/s |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("single", [])] + [
            (f"apex, {k} actor{'s' if k > 1 else ''}",
             ["topology=apex", f"apex.num_actors={k}", f"apex.actor_cpus={1 / k:.3f}",
              "apex.isolate_learner=false"]) for k in args.actors]
        for label, overrides in runs:
            env_rate, update_rate = train_rates(overrides, args.steps, Path(tmp))
            print(f"| {label} | {env_rate:,.0f} | {update_rate:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
