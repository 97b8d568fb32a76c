"""A driver for test_apex's publication test: joins the cluster at argv[1] as apex's driver does,
drives one LearnerWorker as the driver and an actor would, and checks what it publishes (a driver
process of its own: Ray reads its token settings when it is imported)."""

from __future__ import annotations

import sys

import numpy as np
import ray

from distdqn.config import load_config
from distdqn.core.transitions import Transitions
from distdqn.envs import env_info
from distdqn.runtime.cluster import connect
from distdqn.runtime.workers import LearnerWorker


def main(address: str) -> None:
    cfg = load_config("cartpole-apex", [
        "apex.weight_sync_period=8", "apex.batches_per_sample=4", "learner.batch_size=16",
        "train.learning_starts=64", "train.replay_ratio=1.0"])
    info = env_info(cfg.env)
    rng = np.random.default_rng(0)
    n = 256
    transitions = Transitions(
        obs=rng.normal(size=(n, 4)).astype(np.float32), action=rng.integers(0, 2, n),
        reward=np.ones(n, np.float32), next_obs=rng.normal(size=(n, 4)).astype(np.float32),
        terminated=rng.random(n) < 0.05, discount=np.full(n, 0.99 ** 3, np.float32))
    cluster = connect(address)
    try:
        learner = LearnerWorker.options(num_cpus=0).remote(cfg, info, None, 3)
        version, [first] = ray.get(learner.weights.remote(), timeout=60)
        assert version == 0
        accepted, newest, _ = ray.get(learner.add.remote(transitions, None, n), timeout=60)
        assert accepted and newest == 0
        out = ray.get(learner.train.remote(32, n), timeout=120)
        assert out["updates"] == 32 and out["learner_updates"] == 32, out
        published, [ref] = out["weights"]   # the put of 32 may still be under way; 24's is in the store
        assert published in (24, 32), published
        weights, initial = ray.get(ref, timeout=60), ray.get(first, timeout=60)
        assert not all(np.array_equal(weights[k], v) for k, v in initial.items())
        version, [last] = ray.get(learner.weights.remote(), timeout=60)   # waits for the put under way
        assert version == 32, version
        accepted, newest, [answer] = ray.get(learner.add.remote(transitions, None, n), timeout=60)
        assert accepted and newest == 32, newest
        expected = ray.get(last, timeout=60)
        assert all(np.array_equal(v, expected[k]) for k, v in ray.get(answer, timeout=60).items())
        print(f"published {version}")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
