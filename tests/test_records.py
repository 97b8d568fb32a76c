"""What crosses a boundary, by hand: episode and update records, the replay ratio's one accounting,
the staleness histogram, the run's checkpoint schema, and the metrics rows built from reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distdqn.core.ratelimit import RateLimiter
from distdqn.core.ratio import ReplayRatio
from distdqn.core.records import Episodes, UpdateStats
from distdqn.core.staleness import StalenessHistogram, staleness_stats
from distdqn.errors import CheckpointError
from distdqn.metrics import TrainingStats
from distdqn.runtime.messages import RunCounters, RunState


def test_episodes_sum_and_average():
    a = Episodes.of(np.array([10.0, 20.0]), np.array([10, 20]))
    b = Episodes.from_means(2, 30.0, 31.0)
    total = a + b
    assert (total.count, total.return_sum, total.length_sum) == (4, 90.0, 92.0)
    assert total.return_mean == 22.5 and total.length_mean == 23.0
    assert Episodes.from_means(0, math.nan, math.nan) == Episodes()
    assert math.isnan(Episodes().return_mean)


def test_update_stats_merge_and_means():
    s = UpdateStats()
    s.add({"loss": 1.0, "q_mean": 2.0})
    s.add({"loss": 3.0, "q_mean": 4.0})
    other = UpdateStats(2, {"loss": 10.0, "q_mean": 0.0})
    s.merge(other)
    assert s.count == 4 and s.means() == {"loss": 3.5, "q_mean": 1.5}
    assert UpdateStats().means() == {}


def test_replay_ratio_due_and_entitled():
    r = ReplayRatio(0.25, learning_starts=100)
    assert r.entitled(99) == 0.0 and r.due(99, 0) == 0
    assert r.due(100, 0) == 1                         # one batch as soon as learning starts
    assert r.entitled(140) == 10.0 and r.due(140, 0) == 11 and r.due(140, 11) == 0
    assert r.due(141, 5) == 6


def test_the_rate_limiter_reads_the_same_entitlement():
    limiter = RateLimiter(0.25, min_env_steps=100, slack_updates=1)
    limiter.inserted(140)                             # entitled to 10 updates, slack 1
    assert limiter.can_sample(11) and not limiter.can_sample(12)
    assert limiter.ratio.entitled(140) == ReplayRatio(0.25, 100).entitled(140)


def test_staleness_histogram_counts_drops_and_windows():
    h = StalenessHistogram(bound=2)
    assert [h.add(s) for s in (0, 1, 1, 2, 3, 7)] == [True, True, True, True, False, False]
    assert h.counts.tolist() == [1, 2, 1, 2]
    assert h.bins() == {"0": 1, "1": 2, "2": 1, ">2": 2}
    assert h.take_window().tolist() == [1, 2, 1, 2] and h.take_window().tolist() == [0, 0, 0, 0]
    stats = staleness_stats(h.counts)
    assert stats.staleness_mean == pytest.approx((0 + 2 + 2 + 6) / 6) and stats.staleness_max == 3
    assert stats.staleness_p90 == 3 and staleness_stats(np.zeros(4)).staleness_mean is None
    again = StalenessHistogram(2, h.counts.tolist())   # restored from a checkpoint's counters
    assert again.counts.tolist() == h.counts.tolist()


def test_run_state_round_trips_through_components_and_refuses_what_does_not_fit():
    from dataclasses import dataclass

    @dataclass
    class Counted(RunCounters):
        rounds: int = 0

    state = RunState({"online": 1}, Counted(10, 5, 1, rounds=3), replicas=[{"env_steps": 10}, None])
    components = state.components()
    assert set(components) == {"learner", "counters", "replicas"}
    assert RunState.from_components(components, Counted) == state
    with pytest.raises(CheckpointError, match="RunCounters"):
        RunState.from_components(components, RunCounters)        # a field it does not know: rounds
    with pytest.raises(CheckpointError):
        RunState.from_components({"counters": {}}, RunCounters)   # no learner


def test_metrics_rows_from_episode_reports():
    stats = TrainingStats(0.0)
    for _ in range(30):
        stats.add_episodes(Episodes.from_means(5, 10.0, 10.0))    # 150 episodes of return 10
    stats.add_episodes(Episodes.from_means(50, 40.0, 40.0))
    stats.add_episodes(Episodes.from_means(50, 40.0, 40.0))
    row = stats.row(1000, 10)
    assert row["episodes"] == 250
    assert row["episode_return_mean"] == pytest.approx((150 * 10 + 100 * 40) / 250)
    # the newest reports holding at least 100 episodes: the two reports of 50
    assert row["episode_return_mean_100"] == pytest.approx(40.0)
    assert stats.row(1000, 10)["episode_return_mean"] is None   # nothing new since the last row
