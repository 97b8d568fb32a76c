"""A driver for test_apex_scale's priority test: joins the cluster at argv[1], starts 2 replay
shards and a group of 2 learners as apex's driver does, fills the shards with transitions of
equal priority, has the group make 32 updates, and prints, as JSON, how many priorities each
shard now holds that differ from the initial one, the draws one learner made, and the learners'
parameter hashes (a driver process of its own: Ray reads its token settings when it is imported).
With argv[2] ``crowded``: a shard whose every insert thread is held by the rate limiter, and how
long a learner's sync takes to be answered meanwhile."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import ray

from distdqn.config import load_config
from distdqn.core.transitions import Transitions
from distdqn.envs import env_info
from distdqn.runtime import group, learner_group, shards
from distdqn.runtime.cluster import connect
from distdqn.runtime.roles.learner import LearnerWorker
from distdqn.runtime.roles.replay_server import REPLAY_CALLS, SAMPLE_WAIT_S

PER_SHARD, UPDATES = 2000, 32


def main(address: str) -> None:
    cfg = load_config("cartpole-apex", [
        "apex.replay_host=process", "apex.replay_shards=2", "apex.num_learners=2", "apex.batches_per_sample=16",
        "learner.batch_size=64", "train.learning_starts=500", "train.replay_ratio=0.25"])
    info = env_info(cfg.env)
    rng = np.random.default_rng(0)
    cluster = connect(address)
    try:
        replays = shards.start_shards(cfg, info, [None, None])
        for shard in replays:
            t = Transitions(obs=rng.normal(size=(PER_SHARD, 4)).astype(np.float32),
                            action=rng.integers(0, 2, PER_SHARD), reward=np.ones(PER_SHARD, np.float32),
                            next_obs=rng.normal(size=(PER_SHARD, 4)).astype(np.float32),
                            terminated=rng.random(PER_SHARD) < 0.05, discount=np.full(PER_SHARD, 0.97, np.float32))
            assert ray.get(shard.add.remote(t, np.ones(PER_SHARD), PER_SHARD), timeout=60).accepted
        learners = [LearnerWorker.options(num_cpus=0).remote(cfg, info, replays, 3 + 1000 * r, r, 2) for r in range(2)]
        spec = group.form_group(learners, "shm", False, 60, "apex.group_backend", "the test's learners")
        try:
            first = ray.get(learners[0].state_dict.remote(), timeout=60)
            ray.get(learners[1].load_state_dict.remote(first), timeout=60)
            reports = ray.get([h.train.remote(UPDATES, 2 * PER_SHARD) for h in learners], timeout=120)
            assert [r.updates.count for r in reports] == [UPDATES, UPDATES], [r.updates.count for r in reports]
            initial = (1.0 + cfg.replay.priority_eps) ** cfg.replay.alpha   # every insert's priority
            changed, deadline = None, time.time() + 30
            while time.time() < deadline:   # the priority updates were sent, not waited for
                states = ray.get([h.replay_state.remote() for h in replays], timeout=60)
                now = [int(np.sum(~np.isclose(s["replay"]["priorities"][:PER_SHARD], initial))) for s in states]
                if now == changed:
                    break
                changed = now
                time.sleep(1.0)
            hashes = ray.get([h.weights_hash.remote() for h in learners], timeout=60)
            ray.get([h.leave_group.remote() for h in learners], timeout=60)
        finally:
            learner_group.remove(spec)
        print(json.dumps([changed, UPDATES * cfg.learner.batch_size // 2, hashes]))
    finally:
        cluster.shutdown()


def transitions(rng: np.random.Generator, n: int) -> Transitions:
    return Transitions(obs=rng.normal(size=(n, 4)).astype(np.float32), action=rng.integers(0, 2, n),
                       reward=np.ones(n, np.float32), next_obs=rng.normal(size=(n, 4)).astype(np.float32),
                       terminated=rng.random(n) < 0.05, discount=np.full(n, 0.97, np.float32))


def crowded(address: str) -> None:
    """One shard, 5,000 env steps in and no update: every further insert waits SAMPLE_WAIT_S for
    the learners; REPLAY_CALLS + 4 of them in flight (16 actors' worth), then a learner's sync.
    Prints [seconds the sync took, inserts accepted, inserts sent]."""
    cfg = load_config("cartpole-apex", ["apex.replay_host=process", "apex.replay_shards=1", "apex.num_learners=2",
                                        "train.learning_starts=500", "train.replay_ratio=0.5"])
    rng = np.random.default_rng(0)
    cluster = connect(address)
    try:
        (shard,) = shards.start_shards(cfg, env_info(cfg.env), [None])
        assert ray.get(shard.add.remote(transitions(rng, 5000), np.ones(5000), 5000), timeout=60).accepted
        held = [shard.add.remote(transitions(rng, 8), np.ones(8), 8) for _ in range(REPLAY_CALLS + 4)]
        time.sleep(1.0)   # the inserts are waiting on the shard's threads
        start = time.perf_counter()
        ray.get(shard.sync.remote(0, 0), timeout=60)
        took = time.perf_counter() - start
        accepted = sum(r.accepted for r in ray.get(held, timeout=4 * SAMPLE_WAIT_S + 60))
        print(json.dumps([took, accepted, len(held)]))
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    crowded(sys.argv[1]) if sys.argv[2:] == ["crowded"] else main(sys.argv[1])
