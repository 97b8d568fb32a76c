"""Replica: a data-parallel worker's own env, replay and learner, handing out batches at the replay
ratio (no Ray here)."""

from __future__ import annotations

import numpy as np
import torch

from distdqn.config import load_config
from distdqn.envs import env_info
from distdqn.runtime.replica import Replica, replica_seed


def make(**overrides) -> Replica:
    torch.set_num_threads(1)
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    return Replica(cfg, env_info(cfg.env), index=0, num_replicas=2, seed=3)


def test_batches_follow_the_replay_ratio_of_the_local_env_steps():
    r = make(**{"train.learning_starts": 100, "train.replay_ratio": 0.25})
    for _ in range(40):
        assert r.next_batch() is not None
    # every batch drawn was owed: drawn + pending = (local env steps - learning starts) * ratio + 1
    owed = int((r.env_steps - 100) * 0.25) + 1
    assert r.batches_drawn + r.pending == owed
    assert r.run_env_steps == 2 * r.env_steps   # the schedules see the whole run's estimate


def test_without_collecting_only_the_batches_already_owed_come_out():
    r = make(**{"train.learning_starts": 64})
    r.next_batch()
    left = r.pending
    got = [r.next_batch(allow_collect=False) for _ in range(left + 2)]
    assert all(b is not None for b in got[:left]) and got[left] is None and got[left + 1] is None


def test_drain_reports_env_steps_and_episodes_once():
    r = make(**{"train.learning_starts": 64})
    for _ in range(60):
        r.next_batch()
    first = r.drain()
    assert first["env_steps"] == r.env_steps > 0
    assert len(first["episode_returns"]) == len(first["episode_lengths"]) > 0
    np.testing.assert_array_equal(first["episode_returns"], first["episode_lengths"])   # CartPole: +1 a step
    second = r.drain()
    assert second["env_steps"] == 0 and len(second["episode_returns"]) == 0


def test_state_dict_round_trip_keeps_learner_replay_and_counters():
    a = make(**{"train.learning_starts": 64})
    for _ in range(30):
        a.train(1)
    b = make(**{"train.learning_starts": 64})
    b.load_state_dict(a.state_dict())
    assert (b.env_steps, len(b.replay)) == (a.env_steps, len(a.replay))
    assert b.batches_drawn == a.batches_drawn + a.pending
    for k, v in a.learner.get_weights().items():
        np.testing.assert_array_equal(v, b.learner.get_weights()[k])


def test_replica_seeds():
    assert replica_seed(7, 0) == 7   # worker 0 of the first generation is the run's seed, as in single
    assert len({replica_seed(7, i, g) for i in range(4) for g in range(3)}) == 12
