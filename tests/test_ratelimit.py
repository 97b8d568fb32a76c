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


# ---- RateLimitedReplay: the replay behind the limiter, shared by an inserting and a sampling thread ----

def _gated(ratio=0.5, min_env_steps=0, slack=8, capacity=10_000):
    from distdqn.core.ratelimit import RateLimitedReplay
    from distdqn.core.replay import make_replay
    return RateLimitedReplay(make_replay(True, capacity, (2,), np.float32, 0), RateLimiter(ratio, min_env_steps, slack))


def _transitions(n: int, start: int = 0):
    from distdqn.core.transitions import Transitions
    ids = np.arange(start, start + n, dtype=np.float32)
    return Transitions(obs=np.stack([ids, ids], 1), action=np.zeros(n, np.int64), reward=ids,
                       next_obs=np.stack([ids + 1, ids + 1], 1), terminated=np.zeros(n, bool),
                       discount=np.full(n, 0.99, np.float32))


def test_gated_replay_refuses_within_its_timeout_and_keeps_nothing_refused():
    import time
    replay = _gated(ratio=0.5, slack=8)
    assert replay.sample(1, 4, 0.4, timeout=0.05) is None          # nothing inserted yet
    assert replay.add(_transitions(64), np.ones(64), 64, timeout=0.05)
    start = time.perf_counter()
    assert not replay.add(_transitions(64, 64), np.ones(64), 64, timeout=0.2)   # learner 32 behind, slack 8
    assert 0.15 < time.perf_counter() - start < 2.0
    assert len(replay.replay) == 64 and replay.limiter.inserted_env_steps == 64   # the refused insert left no trace
    assert replay.insert_wait_s >= 0.15


def test_gated_replay_wakes_a_waiting_sampler_when_actors_insert():
    import threading
    import time
    replay = _gated(ratio=0.5, slack=4)
    got = {}

    def learner():
        start = time.perf_counter()
        got["batch"] = replay.sample(2, 8, 0.4, timeout=5.0)
        got["waited"] = time.perf_counter() - start

    thread = threading.Thread(target=learner)
    thread.start()
    time.sleep(0.1)
    assert thread.is_alive()                                        # held back: nothing to learn from
    assert replay.add(_transitions(32), np.ones(32), 32, timeout=1.0)
    thread.join(timeout=5.0)
    assert got["batch"] is not None and got["batch"].obs.shape == (16, 2)
    assert 0.05 < got["waited"] < 2.0                               # woken by the insert, not by the timeout


def test_gated_replay_holds_the_ratio_between_free_running_threads():
    """An actor thread and a learner thread each go as fast as they can; the limiter keeps their
    ratio within the slack, and neither ends stuck."""
    import threading
    replay = _gated(ratio=0.25, min_env_steps=64, slack=16)
    stop = threading.Event()
    counts = {"inserted": 0, "sampled": 0, "refused": 0}

    def actor():
        start = 0
        while not stop.is_set():
            if replay.add(_transitions(40, start), np.ones(40), 40, timeout=0.5):
                counts["inserted"] += 40
                start += 40
            else:
                counts["refused"] += 1

    def learner():
        while not stop.is_set():
            batch = replay.sample(4, 8, 0.4, timeout=0.5)
            if batch is not None:
                counts["sampled"] += 4
                replay.update_priorities(batch.indices, np.ones(len(batch.indices)))

    threads = [threading.Thread(target=actor), threading.Thread(target=learner)]
    for t in threads:
        t.start()
    import time
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(timeout=5.0)
    assert not any(t.is_alive() for t in threads)
    owed = 0.25 * (counts["inserted"] - 64)
    assert counts["sampled"] > 100
    assert abs(counts["sampled"] - owed) <= 16 + 4 + 0.25 * 40
