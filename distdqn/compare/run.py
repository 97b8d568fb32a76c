"""Run a comparison's (config, seed) pairs, each in its own `distdqn train` subprocess, one at a time."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distdqn.compare.plan import ConfigEntry, Plan


@dataclass
class RunOutcome:
    """One (config, seed) run: how it ended and, if it finished, its summary.json."""

    label: str
    topology: str
    config: str
    seed: int
    run_dir: str
    returncode: int
    error: str | None = None
    summary: dict[str, Any] | None = None

    @property
    def completed(self) -> bool:
        return self.error is None and self.summary is not None

    @property
    def env_steps_per_s(self) -> float | None:
        return self._rate("env_steps")

    @property
    def updates_per_s(self) -> float | None:
        return self._rate("learner_updates")

    def _rate(self, key: str) -> float | None:
        if not self.completed or not self.summary["wall_s"]:
            return None
        return self.summary[key] / self.summary["wall_s"]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "env_steps_per_s": self.env_steps_per_s,
                "updates_per_s": self.updates_per_s}


def train_argv(plan: Plan, entry: ConfigEntry, seed: int, run_dir: Path) -> list[str]:
    argv = [sys.executable, "-m", "distdqn.cli", "train", entry.config, "--seed", str(seed),
            "--run-dir", str(run_dir), "--set", "log.progress=false"]
    for assignment in [*plan.overrides, *entry.overrides]:
        argv += ["--set", assignment]
    if plan.address is not None:
        argv += ["--address", plan.address]
    return argv


def failure_line(stderr: str, returncode: int) -> str:
    """What to say about a failed run: its last ``error:`` line, else its last stderr line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    if lines:
        return lines[-1]
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"


def run_one(argv: list[str], run_dir: Path, log_path: Path) -> tuple[int, str | None, dict | None]:
    """Run ``argv``; keep its output in ``log_path``; return (exit status, error, summary)."""
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, env=dict(os.environ))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"$ {shlex.join(argv)}\n# exit status {proc.returncode}\n"
                        f"# stdout\n{proc.stdout}\n# stderr\n{proc.stderr}")
    if proc.returncode != 0:
        return proc.returncode, failure_line(proc.stderr, proc.returncode), None
    try:
        return 0, None, json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        return 0, f"no readable summary.json in {run_dir} ({exc})", None


def describe(outcome: RunOutcome) -> str:
    if not outcome.completed:
        return f"FAILED (exit {outcome.returncode}): {outcome.error}"
    s = outcome.summary
    solved = (f"solved in {s['time_to_solve_s']:.2f} s at {s['env_steps_to_solve']:,} env steps"
              if s["solved"] else "not solved")
    return (f"{solved}; final eval {s['final_eval_return_mean']:.1f}; "
            f"{outcome.env_steps_per_s:,.0f} env steps/s; {s['wall_s']:.1f} s")


def run_comparison(plan: Plan) -> tuple[list[RunOutcome], bool]:
    """Every (config, seed) run, seed by seed, with one progress line each on stderr. Returns the
    outcomes and whether Ctrl-C stopped it early (the run it was in is then left out)."""
    if plan.out_dir.exists() and plan.overwrite:
        shutil.rmtree(plan.out_dir)
    (plan.out_dir / "runs").mkdir(parents=True, exist_ok=True)
    print(f"compare: {len(plan.entries)} configs x {len(plan.seeds)} seeds = {plan.total_runs} runs, "
          f"one at a time, into {plan.out_dir}", file=sys.stderr, flush=True)
    outcomes: list[RunOutcome] = []
    try:
        for seed in plan.seeds:
            for entry in plan.entries:
                run_dir = plan.out_dir / "runs" / plan.run_name(entry, seed)
                print(f"[{len(outcomes) + 1}/{plan.total_runs}] {entry.label} seed {seed}: ", end="",
                      file=sys.stderr, flush=True)
                returncode, error, summary = run_one(train_argv(plan, entry, seed, run_dir), run_dir,
                                                     run_dir.with_name(run_dir.name + ".log"))
                outcome = RunOutcome(entry.label, entry.cfg.topology, entry.config, seed,
                                     str(run_dir), returncode, error, summary)
                print(describe(outcome), file=sys.stderr, flush=True)
                outcomes.append(outcome)
    except KeyboardInterrupt:
        print(f"interrupted; the report covers the {len(outcomes)} finished run(s)",
              file=sys.stderr, flush=True)
        return outcomes, True
    return outcomes, False


# ============================================================================================
# Aggregate (pure): per label, median [min-max] over seeds.
