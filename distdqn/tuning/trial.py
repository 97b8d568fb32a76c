"""One trial: an ordinary ``distdqn train`` run in its own process and run directory, followed
through its metrics.jsonl and reported to Tune after every evaluation.

The run is a subprocess (not the trial's own process) so that any topology runs as it would from
the command line (a distributed one joins the search's Ray cluster), a crash stays in its run,
and a trial the scheduler stops ends as a run stopped by SIGTERM does: at its next safe point,
with its final checkpoint and summary.json.

The score (higher is better) puts every solving trial above every other: a run that solved at
``T`` (wall seconds or env steps, ``time_attr``) of a budget ``max_t`` scores
``threshold + span * (1 - T / max_t)``; one that has not scores its best evaluation so far
(below the threshold, or it would have solved). For objective ``return`` the score is the best
evaluation's return.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ray import tune

from distdqn.compare.run import failure_line
from distdqn.tuning.space import SearchPlan, override

POLL_S = 0.25
STOP_GRACE_S = 60.0
HANG_GRACE_S = 300.0


def score(objective: str, threshold: float | None, max_t: float, best_return: float | None,
          solved_at: float | None) -> float:
    """The metric Tune ranks trials by (module docstring)."""
    if best_return is None:
        return -math.inf
    if objective == "return" or solved_at is None:
        return float(best_return)
    span = max(abs(threshold), 1.0)
    return float(threshold + span * (1.0 - min(solved_at, max_t) / max_t))


def trial_argv(plan: SearchPlan, params: dict[str, Any], run_dir: Path) -> list[str]:
    argv = [sys.executable, "-m", "distdqn.cli", "train", plan.config, "--seed", str(plan.seed),
            "--run-dir", str(run_dir), "--overwrite", "--set", "log.progress=false"]
    for assignment in [*plan.trial_overrides(), *(override(k, v) for k, v in sorted(params.items()))]:
        argv += ["--set", assignment]
    if plan.cfg.topology != "single" and plan.address:
        argv += ["--address", plan.address]
    return argv


try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl   # resolved here: the child only calls it
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the trial's thread goes (a trial killed by Tune
    leaves no run behind). Only a system call, safe between fork and exec."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


class MetricsTail:
    """The complete rows appended to a metrics.jsonl since the last read (a torn last line waits)."""

    def __init__(self, path: Path):
        self.path, self._offset = path, 0

    def rows(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        rows = []
        for line in complete.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows


class DistdqnTrial(tune.Trainable):
    """A Tune trial: ``setup`` starts the run, each ``step`` waits for its next evaluation,
    ``cleanup`` stops it (SIGTERM, then SIGKILL after ``STOP_GRACE_S``) if it still runs."""

    def setup(self, config: dict[str, Any], plan: SearchPlan | None = None) -> None:
        self.plan = plan
        self.params = dict(config)
        self.run_dir = plan.out_dir.resolve() / "trials" / self.trial_id
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = (self.run_dir.parent / f"{self.trial_id}.log").open("w")
        argv = trial_argv(plan, self.params, self.run_dir)
        self.log.write(f"$ {' '.join(argv)}\n")
        self.log.flush()
        env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_die_with_parent)  # noqa: PLW1509 -- one system call
        self.tail = MetricsTail(self.run_dir / "metrics.jsonl")
        self.best: float | None = None
        self.solved_at: float | None = None
        self.last: dict[str, Any] = {}
        self.started_at = time.time()   # the trials' order (Optuna's trial ids carry none)

    def step(self) -> dict[str, Any]:
        """The next evaluation's figures, or the run's final ones (``done``) when it has ended. A
        run with a wall budget that outlives it by far (twice, plus start-up and the final
        evaluation) is wedged: the trial fails (``cleanup`` stops it) instead of waiting forever."""
        budget = self.plan.budget_s
        give_up = self.started_at + 2 * budget + HANG_GRACE_S if budget is not None else float("inf")
        while True:
            for row in self.tail.rows():
                if row.get("eval_return_mean") is not None:
                    return self._result(row, done=False)
            if self.proc.poll() is not None:
                return self._final()
            if time.time() > give_up:
                raise RuntimeError(f"trial {self.trial_id}: the run outlived its {budget:g} s budget by "
                                   f"{time.time() - self.started_at - budget:.0f} s; stopped")
            time.sleep(POLL_S)

    def _result(self, row: dict[str, Any], done: bool) -> dict[str, Any]:
        p = self.plan
        ret = float(row["eval_return_mean"])
        self.best = ret if self.best is None else max(self.best, ret)
        if self.solved_at is None and row.get("solved"):
            self.solved_at = float(row[p.time_attr])
        self.last = {"wall_s": float(row["wall_s"]), "env_steps": int(row["env_steps"]),
                     "eval_return_mean": ret, "best_eval_return_mean": self.best,
                     "solved": self.solved_at is not None,
                     "score": score(p.objective, p.threshold, p.max_t, self.best, self.solved_at),
                     "run_dir": str(self.run_dir), "run_ended": done, "started_at": self.started_at}
        return dict(self.last)

    def _final(self) -> dict[str, Any]:
        """The run's own summary.json, or (it failed) its last figures with the error."""
        self.log.flush()
        summary_path = self.run_dir / "summary.json"
        if self.proc.returncode != 0 or not summary_path.is_file():
            error = failure_line(Path(self.log.name).read_text(errors="replace"), self.proc.returncode)
            raise RuntimeError(f"trial {self.trial_id}: the run failed: {error}")
        s = json.loads(summary_path.read_text())
        p = self.plan
        self.best = s["best_eval_return_mean"] if s.get("best_eval_return_mean") is not None else self.best
        if s["solved"]:
            self.solved_at = float(s["time_to_solve_s"] if p.time_attr == "wall_s" else s["env_steps_to_solve"])
        return {"wall_s": float(s["wall_s"]), "env_steps": int(s["env_steps"]),
                "eval_return_mean": s["final_eval_return_mean"], "best_eval_return_mean": self.best,
                "solved": bool(s["solved"]), "time_to_solve_s": s["time_to_solve_s"],
                "env_steps_to_solve": s["env_steps_to_solve"],
                "score": score(p.objective, p.threshold, p.max_t, self.best, self.solved_at),
                "run_dir": str(self.run_dir), "run_ended": True, "started_at": self.started_at, "done": True}

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        """Nothing for Tune to keep: the run's checkpoints are in its run directory. A trial Tune
        restores (a resumed search) trains its run again from the start, so that its time to
        solve is one run's."""
        return {"run_dir": str(self.run_dir)}

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """See ``save_checkpoint``: the run starts afresh."""

    def cleanup(self) -> None:
        if self.proc.poll() is None:                # stopped by the scheduler: as SIGTERM stops a run
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

