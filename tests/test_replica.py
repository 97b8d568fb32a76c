"""Replica: single's and every data-parallel worker's own env, replay and learner; its steps are
separate calls (collect, store, sample_owed, learn, sync_policy), batches come at the replay ratio
(no Ray here)."""

from __future__ import annotations

import numpy as np
import torch

from distdqn.config import load_config
from distdqn.envs import env_info
from distdqn.local.replica import Replica, replica_seed


def make(**overrides) -> Replica:
    torch.set_num_threads(1)
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    return Replica(cfg, env_info(cfg.env), index=0, num_replicas=2, seed=3)


def test_batches_follow_the_replay_ratio_of_the_local_env_steps():
    r = make(**{"train.learning_starts": 100, "train.replay_ratio": 0.25})
    for _ in range(40):
        assert r.next_batch() is not None
    # every batch drawn was owed: drawn (pending included) = (local env steps - learning starts) * ratio + 1
    owed = int((r.env_steps - 100) * 0.25) + 1
    assert r.batches_drawn == owed
    assert r.run_env_steps == 2 * r.env_steps   # the schedules see the whole run's estimate


def test_without_collecting_only_the_batches_already_owed_come_out():
    r = make(**{"train.learning_starts": 64})
    r.next_batch()
    left = r.pending
    got = [r.next_batch(allow_collect=False) for _ in range(left + 2)]
    assert all(b is not None for b in got[:left]) and got[left] is None and got[left + 1] is None


def test_report_gives_env_steps_and_episodes_once():
    r = make(**{"train.learning_starts": 64})
    for _ in range(60):
        r.next_batch()
    first = r.report()
    assert first.env_steps == r.env_steps > 0
    assert first.episodes.count > 0
    assert first.episodes.return_sum == first.episodes.length_sum   # CartPole: +1 a step
    second = r.report()
    assert second.env_steps == 0 and second.episodes.count == 0


def test_the_steps_are_separate_calls_with_no_side_effects_between_them():
    r = make(**{"train.learning_starts": 64, "train.replay_ratio": 0.5})
    rollout = r.collect()
    assert r.env_steps == 0 and len(r.replay) == 0          # collecting does not store
    r.store(rollout)
    assert r.env_steps == rollout.env_steps > 0 and len(r.replay) == len(rollout.transitions) > 0
    assert r.sample_owed() == [] and r.batches_drawn == 0   # learning has not started
    while r.env_steps < 64:
        r.store(r.collect())
    batches = r.sample_owed()
    assert len(batches) == int((r.env_steps - 64) * 0.5) + 1 == r.batches_drawn
    assert r.sample_owed() == []                            # nothing more is owed until more is stored
    obs = rollout.transitions.obs[:4]
    acting_before = r.actor.policy.q_values(obs).copy()
    r.learn(batches[0])
    assert r.learner.updates == 1
    np.testing.assert_array_equal(r.actor.policy.q_values(obs), acting_before)   # learning leaves acting alone
    r.sync_policy()
    np.testing.assert_allclose(r.actor.policy.q_values(obs), r.learner.online(torch.as_tensor(obs)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_keeps_learner_replay_and_counters():
    a = make(**{"train.learning_starts": 64})
    for _ in range(30):
        a.train(1)
    b = make(**{"train.learning_starts": 64})
    b.load_state_dict(a.state_dict())
    assert (b.env_steps, len(b.replay)) == (a.env_steps, len(a.replay))
    assert b.batches_drawn == a.batches_drawn
    for k, v in a.learner.get_weights().items():
        np.testing.assert_array_equal(v, b.learner.get_weights()[k])


def test_replica_seeds():
    assert replica_seed(7, 0) == 7   # worker 0 of the first generation is the run's seed, as in single
    assert len({replica_seed(7, i, g) for i in range(4) for g in range(3)}) == 12
