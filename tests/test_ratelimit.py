"""The replay ratio is held by the rate limiter whichever side is faster, and it never deadlocks."""

from __future__ import annotations

import numpy as np

from distdqn.core.ratelimit import RateLimiter


def test_no_sampling_before_learning_starts():
    limiter = RateLimiter(0.5, min_env_steps=100, slack_updates=4)
    limiter.inserted(99)
    assert not limiter.can_sample(1)
    limiter.inserted(1)
    assert limiter.can_sample(4) and not limiter.can_sample(5)


def test_fast_learner_waits_for_actors():
    limiter = RateLimiter(0.25, min_env_steps=0, slack_updates=8)
    limiter.inserted(400)                      # entitles 100 updates (+8 slack)
    limiter.sampled(108)
    assert not limiter.can_sample(1)
    limiter.inserted(4)                        # one more update's worth
    assert limiter.can_sample(1)


def test_fast_actors_wait_for_learner():
    limiter = RateLimiter(0.5, min_env_steps=0, slack_updates=10)
    limiter.inserted(100)                      # 50 updates owed
    assert not limiter.can_insert(32)          # the learner is 50 behind, slack is 10
    limiter.sampled(40)
    assert limiter.can_insert(32)


def test_ratio_is_held_and_never_deadlocks_with_random_speeds():
    rng = np.random.default_rng(0)
    limiter = RateLimiter(0.5, min_env_steps=64, slack_updates=16)
    for _ in range(20_000):
        if rng.random() < rng.choice([0.1, 0.9]):
            n = int(rng.integers(1, 300))     # inserts larger than the slack too
            if limiter.can_insert(n):
                limiter.inserted(n)
                continue
        k = int(rng.integers(1, 20))
        if limiter.can_sample(k):
            limiter.sampled(k)
        else:
            assert limiter.can_insert(1), "both sides refused: deadlock"
            limiter.inserted(int(rng.integers(1, 300)))
    owed = 0.5 * (limiter.env_steps - 64)
    assert abs(limiter.updates - owed) <= 16 + 300 * 0.5
    assert limiter.updates > 1000
