"""Metrics: one JSON object per log interval in metrics.jsonl, TensorBoard scalars, a progress bar.

``TrainingStats`` accumulates what happens between two rows (episodes that ended, learner update
metrics) and turns it into a row with rates over the interval. ``MetricsWriter`` writes rows.

History stays honest across a crash: a resumed run first drops the rows logged after its
checkpoint (``env_steps`` past it) and a torn last line (``truncate_metrics``), and tells
TensorBoard to drop its events past that step too (a SessionLog START at that step purges them);
``read_metrics`` skips a torn last line of a run that is still writing or died mid-line.
"""

from __future__ import annotations

import json
import math
import os
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

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self._writer = EventFileWriter(str(log_dir))
        if purge_step is not None:   # a resumed run: TensorBoard drops earlier files' events past this step
            self._writer.add_event(Event(step=purge_step + 1, wall_time=time.time(),
                                         session_log=SessionLog(status=SessionLog.START)))

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
    """Appends rows to ``metrics.jsonl`` and mirrors numeric fields to TensorBoard (x = env steps)
    and to any other ``sinks`` (objects with ``scalars(values, step)`` and ``close(summary)``:
    wandb_logger.py's)."""

    def __init__(self, run_dir: Path, tensorboard: bool, progress: bool, total_env_steps: int,
                 initial_env_steps: int = 0, resumed: bool = False, note=None,
                 sinks: list[Any] | tuple[Any, ...] = ()):
        """``resumed``: the run goes on from a checkpoint at ``initial_env_steps``: rows past it
        are dropped first. ``note``: where to report, once, rows lost to a failed write.
        ``sinks``: other loggers each row also goes to (W&B)."""
        self._sinks = list(sinks)
        self.path = run_dir / "metrics.jsonl"
        if resumed:
            truncate_metrics(self.path, initial_env_steps)
        self._file = self.path.open("a")
        self._note, self._write_failed = note, False
        self._tb = (TensorBoardWriter(run_dir / "tensorboard", initial_env_steps if resumed else None)
                    if tensorboard else None)
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
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as exc:   # a full disk: the run goes on, its rows are lost meanwhile (said once)
            if not self._write_failed and self._note is not None:
                self._note(f"metrics.jsonl: a row could not be written ({exc.strerror or exc}); "
                           f"rows are lost until it can be")
            self._write_failed = True
            return
        if self._tb is not None:
            self._tb.scalars({k: v for k, v in row.items() if k != "env_steps"}, int(row["env_steps"]))
        for sink in self._sinks:
            sink.scalars({k: v for k, v in row.items() if k != "env_steps"}, int(row["env_steps"]))
        if self._progress is not None:
            fmt = lambda v: "-" if v is None else f"{v:.1f}"
            self._progress.update(self._task, completed=row["env_steps"],
                                  ret=fmt(row.get("episode_return_mean_100")),
                                  eval=fmt(row.get("eval_return_mean")),
                                  rate=f"{row['env_steps_per_s']:,.0f}")

    def histogram(self, tag: str, counts: np.ndarray, step: int) -> None:
        if self._tb is not None:
            self._tb.histogram(tag, counts, step)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Close every output; ``summary``: the run's, for sinks that keep one."""
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        for sink in self._sinks:
            sink.close(summary)
        try:
            self._file.close()
        except OSError:
            pass   # the rows it could not flush were reported by write


def _rows(text: str, source: Path) -> list[dict[str, Any]]:
    """The rows of a metrics file; a torn last line (a writer that died mid-line, or is writing it
    now) is left out. A bad line before the last is a ValueError naming it."""
    rows = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            if number == len(lines):
                break
            raise ValueError(f"{source}: line {number} is not a JSON row") from None
        rows.append(row)
    return rows


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (a torn last line skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    return _rows(path.read_text(), path)


def truncate_metrics(path: Path, env_steps: int) -> int:
    """Drop the rows past ``env_steps`` (logged after the checkpoint a run resumes from) and a
    torn last line, replacing the file in one rename; returns how many rows were dropped."""
    if not path.is_file():
        return 0
    rows = _rows(path.read_text(), path)
    keep = [row for row in rows if row.get("env_steps", 0) <= env_steps]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(rows) - len(keep)
