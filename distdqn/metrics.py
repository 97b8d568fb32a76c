"""Metrics: one JSON object per log interval in metrics.jsonl, TensorBoard scalars, a progress bar.

``TrainingStats`` accumulates what happens between two rows (episodes that ended, learner update
metrics) and turns it into a row with rates over the interval. ``MetricsWriter`` writes rows.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from distdqn.core.records import Episodes, UpdateStats


class TrainingStats:
    """Between-rows accumulator for env steps, learner updates, episodes and update metrics.

    Episodes arrive as reports (``Episodes``: a count and sums), never one by one: the row's
    ``episode_return_mean`` is over the episodes reported since the previous row, and
    ``episode_return_mean_100`` over the newest reports that hold at least 100 episodes."""

    RECENT_EPISODES = 100

    def __init__(self, start_time: float, env_steps: int = 0, learner_updates: int = 0):
        self.start_time = start_time
        self._last = (start_time, env_steps, learner_updates)
        self.recent: deque[tuple[int, float]] = deque()   # (count, return sum) of the newest reports
        self._new = Episodes()
        self._updates = UpdateStats()
        self.episodes = 0

    def rebase(self, start_time: float, since: float, env_steps: int, learner_updates: int) -> None:
        """Count wall time from ``start_time`` and the first row's rates from these counts at
        ``since`` (a run opens, or resumes)."""
        self.start_time = start_time
        self._last = (since, env_steps, learner_updates)

    def add_episodes(self, episodes: Episodes) -> None:
        if not episodes.count:
            return
        self._new = self._new + episodes
        self.episodes += episodes.count
        self.recent.append((episodes.count, episodes.return_sum))
        while len(self.recent) > 1 and sum(c for c, _ in self.recent) - self.recent[0][0] >= self.RECENT_EPISODES:
            self.recent.popleft()

    def add_updates(self, stats: UpdateStats) -> None:
        self._updates.merge(stats)

    @property
    def recent_return(self) -> float:
        count = sum(c for c, _ in self.recent)
        return sum(s for _, s in self.recent) / count if count else math.nan

    def row(self, env_steps: int, learner_updates: int, **extra: Any) -> dict[str, Any]:
        """A metrics row for the interval since the previous row; resets the interval."""
        now = time.perf_counter()
        last_time, last_steps, last_updates = self._last
        elapsed = max(now - last_time, 1e-9)
        row: dict[str, Any] = {
            "wall_s": now - self.start_time,
            "env_steps": env_steps,
            "learner_updates": learner_updates,
            "episodes": self.episodes,
            "episode_return_mean": self._new.return_mean if self._new.count else None,
            "episode_return_mean_100": self.recent_return if self.recent else None,
            "episode_length_mean": self._new.length_mean if self._new.count else None,
            "env_steps_per_s": (env_steps - last_steps) / elapsed,
            "updates_per_s": (learner_updates - last_updates) / elapsed,
        }
        row.update(self._updates.means())
        if "loss" not in row:
            row["loss"] = None
        row.update(extra)
        self._last = (now, env_steps, learner_updates)
        self._new, self._updates = Episodes(), UpdateStats()
        return row


class TensorBoardWriter:
    """Scalars into a TensorBoard event file, through TensorBoard's own event writer (the same
    files ``torch.utils.tensorboard`` writes, with no torch in between; importing either costs
    about 0.2 s once torch is loaded: ``python -m benchmarks.startup_costs``)."""

    def __init__(self, log_dir: Path):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self._writer = EventFileWriter(str(log_dir))

    def scalars(self, values: dict[str, Any], step: int) -> None:
        summary = self._summary(value=[
            self._summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)])
        self._writer.add_event(self._event(summary=summary, wall_time=time.time(), step=step))
        self._writer.flush()

    def histogram(self, tag: str, counts: np.ndarray, step: int) -> None:
        """Counts of the integer values 0, 1, ..., len(counts) - 1 as a TensorBoard histogram."""
        from tensorboard.compat.proto.summary_pb2 import HistogramProto
        counts = np.asarray(counts, dtype=np.float64)
        values = np.arange(len(counts), dtype=np.float64)
        total = counts.sum()
        if total == 0:
            return
        seen = values[counts > 0]
        proto = HistogramProto(min=float(seen.min()), max=float(seen.max()), num=float(total),
                               sum=float((values * counts).sum()), sum_squares=float((values**2 * counts).sum()),
                               bucket_limit=(values + 0.5).tolist(), bucket=counts.tolist())
        summary = self._summary(value=[self._summary.Value(tag=tag, histo=proto)])
        self._writer.add_event(self._event(summary=summary, wall_time=time.time(), step=step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsWriter:
    """Appends rows to ``metrics.jsonl`` and mirrors numeric fields to TensorBoard (x = env steps)."""

    def __init__(self, run_dir: Path, tensorboard: bool, progress: bool, total_env_steps: int,
                 initial_env_steps: int = 0):
        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("a")
        self._tb = TensorBoardWriter(run_dir / "tensorboard") if tensorboard else None
        self._progress = None
        if progress and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f} env steps"),
                TextColumn("return {task.fields[ret]}"), TextColumn("eval {task.fields[eval]}"),
                TextColumn("{task.fields[rate]} steps/s"), TimeElapsedColumn(), transient=False)
            self._task = self._progress.add_task("train", total=total_env_steps,
                                                 completed=initial_env_steps, ret="-", eval="-", rate="-")
            self._progress.start()

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            self._tb.scalars({k: v for k, v in row.items() if k != "env_steps"}, int(row["env_steps"]))
        if self._progress is not None:
            fmt = lambda v: "-" if v is None else f"{v:.1f}"
            self._progress.update(self._task, completed=row["env_steps"],
                                  ret=fmt(row.get("episode_return_mean_100")),
                                  eval=fmt(row.get("eval_return_mean")),
                                  rate=f"{row['env_steps_per_s']:,.0f}")

    def histogram(self, tag: str, counts: np.ndarray, step: int) -> None:
        if self._tb is not None:
            self._tb.histogram(tag, counts, step)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        self._file.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
