"""`distdqn tune`: a hyperparameter search on Ray Tune, and the preset it finds.

    distdqn tune acrobot --space space.yaml --out tunes/acrobot

Ray Tune runs the trials (each an ordinary ``distdqn train`` run directory, any topology; on the
local machine or a cluster with ``--address``), proposes them (Optuna's TPE, or random) and
stops bad ones early (ASHA, on the run's own wall clock or env steps). When the search is done
the best configs are trained again on seeds the search never saw, one run at a time (the
``distdqn compare`` machinery), and the best of them is written as a preset::

    OUT/
      search.json          what was asked (config, space, settings, command): --resume reads it
      space.yaml           the space file, as given
      tune/                Ray Tune's experiment (its state: what --resume restores)
      trials/<trial>/      each trial's run directory; trials/<trial>.log its output
      configs/<trial>.yaml the verified configs, as presets
      verify/              the verification: a `distdqn compare` report of the top configs
      report.md            every trial ranked, the verification, the best config
      results.json         the same as data
      search.png           the score of every trial in order, and the score against each key
      best.yaml            the best config, a preset: `distdqn train OUT/best.yaml`

In reading order: ``space.py`` reads and checks the space (nothing started), ``trial.py`` is one
trial, ``report.py`` ranks and writes; ``run_search`` below strings them together.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from ray.tune import Callback

from distdqn.tuning.space import Distribution, SearchPlan, SpaceError, plan_search

__all__ = ["Distribution", "SearchPlan", "SpaceError", "plan_search", "run_search"]

SEARCH_FILE = "search.json"


def save_request(plan: SearchPlan, request: dict) -> None:
    """search.json and space.yaml: what --resume needs to plan the same search again."""
    shutil.copyfile(plan.space_file, plan.out_dir / "space.yaml")
    (plan.out_dir / SEARCH_FILE).write_text(json.dumps(request, indent=1))


def read_request(out_dir: Path) -> dict:
    if not (out_dir / SEARCH_FILE).is_file():
        raise SpaceError(f"--resume: {out_dir} holds no search (no {SEARCH_FILE})")
    try:
        return json.loads((out_dir / SEARCH_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise SpaceError(f"--resume: {out_dir / SEARCH_FILE} cannot be read ({exc})") from None


def _tuner(plan: SearchPlan, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from distdqn.tuning.trial import DistdqnTrial

    cpus = 1.0 if plan.cfg.topology == "single" else 0.01   # a distributed run's actors ask for their own
    trainable = tune.with_resources(tune.with_parameters(DistdqnTrial, plan=plan), {"cpu": cpus})
    storage = str(plan.out_dir.resolve())
    if resume:
        return tune.Tuner.restore(os.path.join(storage, "tune"), trainable, resume_unfinished=True,
                                  resume_errored=True)
    points = [plan.baseline] if plan.baseline is not None else None
    if plan.search == "optuna":
        import warnings

        import optuna
        from ray.tune.search.optuna import OptunaSearch
        optuna.logging.set_verbosity(optuna.logging.WARNING)   # not "a new study created" on the terminal
        # list-valued choices (network.hidden_sizes) live in memory only: Optuna's storage warning is moot
        warnings.filterwarnings("ignore", message="Choices for a categorical distribution", category=UserWarning)
        search_alg = OptunaSearch(metric="score", mode="max", points_to_evaluate=points, seed=plan.seed)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator
        search_alg = BasicVariantGenerator(points_to_evaluate=points, random_state=plan.seed,
                                           max_concurrent=plan.max_concurrent)
    # ASHA: rungs at max_t/9 and max_t/3; at each, a trial below the best third of those that
    # reached it is stopped
    scheduler = ASHAScheduler(time_attr=plan.time_attr, metric="score", mode="max", max_t=plan.max_t,
                              grace_period=plan.max_t / 9, reduction_factor=3)
    return tune.Tuner(
        trainable,
        param_space={key: dist.tune_domain() for key, dist in plan.space.items()},
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=plan.trials,
                                    max_concurrent_trials=plan.max_concurrent if plan.search == "optuna" else None,
                                    trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(name="tune", storage_path=storage, verbose=0,
                                  callbacks=[_Progress(plan)],
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)),
    )


class _Progress(Callback):
    """One line on stderr per trial that ends: its values and how it did."""

    def __init__(self, plan: SearchPlan):
        self.plan, self.ended = plan, 0

    def _say(self, trial, how: str) -> None:
        self.ended += 1
        values = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in trial.config.items())
        print(f"[{self.ended}/{self.plan.trials}] {trial.trial_id} ({values}): {how}", file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        from distdqn.tuning.report import describe_result
        self._say(trial, describe_result(self.plan, trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._say(trial, "FAILED (its log: trials/" + trial.trial_id + ".log)")


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_search(plan: SearchPlan, request: dict, resume: bool = False) -> Path:
    """Run (or resume) the search, verify its best configs, write the report; returns best.yaml's
    path. Ctrl-C stops the search (Tune keeps its state: --resume goes on)."""
    from distdqn.compare.report import git_commit
    from distdqn.runtime.cluster import connect
    from distdqn.tuning.report import collect_trials, verify_and_report

    commit = git_commit()
    if not resume:
        if plan.out_dir.exists():
            shutil.rmtree(plan.out_dir)           # plan_search checked it is a search (--overwrite)
        plan.out_dir.mkdir(parents=True)
        save_request(plan, request)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    address = plan.address
    cluster = connect(address)
    try:
        import ray
        if address is None:   # a distributed trial joins this local instance
            plan.address = ray.get_runtime_context().gcs_address
        print(f"tune: {plan.trials} trials of {plan.config} ({plan.cfg.topology}, {plan.cfg.env.id}), "
              f"objective {plan.objective}, {plan.search} search, ASHA on {plan.time_attr} up to "
              f"{plan.max_t:g}, {plan.max_concurrent} at a time, into {plan.out_dir}",
              file=sys.stderr, flush=True)
        started = time.time()
        # SIGTERM as Ctrl-C: Tune stops its trials (each run at its next safe point) and saves its state
        previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
        try:
            results = _tuner(plan, resume).fit()
        finally:
            signal.signal(signal.SIGTERM, previous)
        search_s = time.time() - started
    finally:
        cluster.shutdown()
        plan.address = address   # verification: each run starts its own instance, or joins the cluster
    if results.num_terminated + results.num_errors < plan.trials:
        print(f"tune: interrupted after {results.num_terminated + results.num_errors} of {plan.trials} trials; "
              f"`distdqn tune --resume {plan.out_dir}` goes on", file=sys.stderr, flush=True)
        raise KeyboardInterrupt
    trials = collect_trials(plan, results)
    return verify_and_report(plan, trials, search_s, commit)
