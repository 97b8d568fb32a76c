"""`distdqn compare`: which topology for my task?

Each (config, seed) pair is trained by its own ``distdqn train`` subprocess, one at a time so that
no run's timings are disturbed by another's, interleaved by seed (seed 0 of every config, then
seed 1, ...) so that a machine that slows down over time does not favour one config. Then::

    OUT/
      report.md                  one row per config: median [min-max] over seeds, and how to reproduce
      results.json               every run's figures and the per-config aggregates
      return_vs_env_steps.png    evaluation return per config: faint line per seed, bold median
      return_vs_wall_s.png
      sweep.png                  with --sweep KEY=V1,V2,...: throughput and time to solve against
                                 the swept value, one line per config (how many workers?)
      runs/<label>-s<seed>/      each run's directory, as `distdqn train` writes it
      runs/<label>-s<seed>.log   its stdout and stderr

A config's label is its ``topology``, or its name when two configs share a topology (a preset's
name, or a file's stem). A run that fails is recorded (with its last ``error:`` line) and the
comparison goes on.

In reading order: ``plan.py`` loads and checks every config (nothing written), ``run.py`` runs
the pairs, ``report.py`` aggregates over seeds and formats (pure), ``plots.py`` draws; ``compare``
below strings them together.
"""

from __future__ import annotations

import json
import sys
import time

from distdqn.compare.plan import ConfigEntry, Plan, Sweep, config_labels, plan_comparison
from distdqn.compare.plots import plot_returns, plot_sweep
from distdqn.compare.report import (
    aggregate,
    git_commit,
    machine_description,
    report_markdown,
    results_json,
    software_versions,
)
from distdqn.compare.run import RunOutcome, run_comparison

__all__ = ["ConfigEntry", "Plan", "RunOutcome", "Sweep", "compare", "config_labels", "plan_comparison"]


def compare(plan: Plan) -> list[RunOutcome]:
    """Run everything, then write report.md, results.json and the plots; returns the outcomes.
    Ctrl-C stops the runs, writes the report of those that finished, and raises KeyboardInterrupt."""
    commit = git_commit()          # before anything is written: the report dir may be in the tree
    runs, interrupted = run_comparison(plan)
    aggregates = aggregate(runs)
    provenance = {"commit": commit, "machine": machine_description(), "software": software_versions(),
                  "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    (plan.out_dir / "report.md").write_text(report_markdown(plan, runs, aggregates, provenance))
    (plan.out_dir / "results.json").write_text(
        json.dumps(results_json(plan, runs, aggregates, provenance), indent=1))
    plot_returns(plan, runs)
    if plan.sweep is not None:
        plot_sweep(plan, aggregates)
    print(f"wrote {plan.out_dir / 'report.md'}", file=sys.stderr, flush=True)
    if interrupted:
        raise KeyboardInterrupt
    return runs
