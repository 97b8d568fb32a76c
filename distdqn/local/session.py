"""What every topology does around its loop, in one place: evaluation and the solved criterion,
metrics rows, periodic checkpoints, and the final summary. No Ray here.

The solved criterion: the first evaluation over at least 10 greedy episodes whose mean return
reaches the threshold. ``time_to_solve_s`` is wall-clock seconds from the start of ``run`` (env
creation, evaluations and everything else included), summed over resumed segments.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdqn import signals
from distdqn.checkpoint import BEST, prune_checkpoints, save_checkpoint
from distdqn.config import Config
from distdqn.core.actor import evaluate
from distdqn.envs import EnvInfo, make_vector_env
from distdqn.errors import CheckpointWriteError
from distdqn.local import build
from distdqn.metrics import MetricsWriter, TrainingStats


@dataclass
class RunResult:
    summary: dict[str, Any]
    run_dir: Path


def torch_threads(cfg: Config) -> int:
    """Torch threads for a one-process run: ``train.torch_threads``, else 1 for an MLP (its
    matmuls are too small to gain from more threads; benchmarks/RESULTS.md, "Data-parallel
    topologies"), else the machine's cores."""
    if cfg.train.torch_threads:
        return cfg.train.torch_threads
    return 1 if cfg.network.kind == "mlp" else max(1, os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class RunSession:
    """Evaluation, metrics, checkpoints and the summary for one run (or one resumed segment)."""

    def __init__(self, cfg: Config, run_dir: Path, info: EnvInfo, background_evaluation: bool = False):
        """``background_evaluation``: evaluations run on a thread while the caller goes on (a driver
        that conducts other processes keeps them busy meanwhile); else at once, in the caller."""
        self.cfg, self.info = cfg, info
        self.background_evaluation = background_evaluation
        self.run_dir = run_dir
        self.start = time.perf_counter()
        self.wall_offset = 0.0          # wall seconds of earlier segments of a resumed run
        self.threshold = cfg.eval.solve_threshold if cfg.eval.solve_threshold is not None else info.reward_threshold
        if self.threshold is None:
            self.threshold = math.inf   # an id without a reward_threshold is never "solved"
        self.eval_envs = make_vector_env(cfg.env, cfg.eval.num_envs, evaluation=True)
        self.evaluations = 0
        self.last_eval: dict[str, Any] | None = None
        self.best_eval: dict[str, Any] | None = None   # the evaluation checkpoints/best holds
        self.solved_at: dict[str, Any] | None = None
        self.next_eval = cfg.eval.interval_env_steps
        self.next_log = cfg.log.interval_env_steps
        self.next_checkpoint = cfg.checkpoint.interval_env_steps or math.inf
        self._last_save = self.start    # periodic checkpoints by wall clock: checkpoint.interval_s
        self.failed_saves = 0           # periodic checkpoints that could not be written (a full disk)
        self._failing = 0               # ... in a row
        self.resumed = False            # ``resume`` was called: metrics rows past its env steps go
        self.stats = TrainingStats(self.start)
        self.writer: MetricsWriter | None = None
        self._last_logged_env_steps = -1
        self._eval_logged = True   # the last evaluation is in a metrics row
        self.notes: list[str] = []
        self._policy = None             # the evaluations' greedy policy (weights set per evaluation)
        self._eval_thread: threading.Thread | None = None
        self._eval_box: dict[str, Any] = {}
        self._eval_env_steps = 0
        self.stop_reason: str | None = None

    # ---- lifecycle ----
    def open(self, env_steps: int = 0, learner_updates: int = 0) -> None:
        """Start the metrics (after ``resume``, if resuming), counting rates from these counts."""
        self.stats.rebase(self.start - self.wall_offset, self.start, env_steps, learner_updates)
        self.writer = MetricsWriter(self.run_dir, self.cfg.log.tensorboard, self.cfg.log.progress,
                                    self.cfg.train.total_env_steps, env_steps, resumed=self.resumed,
                                    note=self.note, sinks=self._sinks())
        self._last_save = time.perf_counter()

    def _sinks(self) -> list[Any]:
        """Loggers beside metrics.jsonl and TensorBoard: Weights & Biases when ``log.wandb`` asks."""
        if self.cfg.log.wandb.mode == "off":
            return []
        from distdqn.wandb_logger import WandbWriter
        return [WandbWriter(self.cfg, self.run_dir)]

    def wall_s(self) -> float:
        return self.wall_offset + time.perf_counter() - self.start

    # ---- evaluation ----
    def evaluate_if_due(self, env_steps: int, weights: Callable[[], dict[str, np.ndarray]]) -> bool:
        """Evaluate the greedy policy of ``weights()`` every ``eval.interval_env_steps``: at once,
        or on a thread (``background_evaluation``; recorded by a later call, timed at its end,
        the next one not started before). True when the run should stop (solved and
        ``eval.stop_when_solved``, or past ``train.max_wall_s``)."""
        if self._eval_thread is not None and not self._eval_thread.is_alive():
            self._record_background()
        if env_steps >= self.next_eval and self._eval_thread is None:
            while self.next_eval <= env_steps:
                self.next_eval += self.cfg.eval.interval_env_steps
            policy = self._policy_with(weights())
            if self.background_evaluation:
                self._start_background(policy, env_steps)
            else:
                self._record_evaluation(self._evaluate_returns(policy), env_steps, self.wall_s())
        return self.should_stop()

    def due_for_evaluation(self, env_steps: int) -> bool:
        return env_steps >= self.next_eval

    def _policy_with(self, weights: dict[str, np.ndarray]) -> Any:
        if self._policy is None:
            self._policy = build.build_policy(self.cfg, self.info, weights)
        else:
            self._policy.set_weights(weights)
        return self._policy

    def _evaluate_returns(self, policy: Any) -> np.ndarray:
        """Returns of this run's next evaluation (each has its own seed, so reruns match)."""
        self.evaluations += 1
        return evaluate(policy, self.eval_envs, self.cfg.eval.episodes, self.cfg.eval.epsilon,
                        seed=self.cfg.seed * 1_000_003 + 7919 * self.evaluations)

    def _record_evaluation(self, returns: np.ndarray, env_steps: int, wall_s: float) -> None:
        self.last_eval = {"eval_return_mean": float(returns.mean()), "eval_return_std": float(returns.std()),
                          "eval_episodes": len(returns), "eval_env_steps": env_steps}
        self._eval_logged = False
        if self.solved_at is None and len(returns) >= 10 and returns.mean() >= self.threshold:
            self.solved_at = {"time_to_solve_s": wall_s, "env_steps_to_solve": env_steps}
        self._keep_if_best(env_steps)

    def _keep_if_best(self, env_steps: int) -> None:
        """``checkpoints/best``: the evaluated network (the session's policy holds its weights until
        the next evaluation), when its evaluation beats every earlier one (``checkpoint.keep_best``).
        Weights only, no point to resume from: ``latest`` is left as it is."""
        mean = self.last_eval["eval_return_mean"]
        if not self.cfg.checkpoint.keep_best or (self.best_eval is not None and mean <= self.best_eval["eval_return_mean"]):
            return
        self.best_eval = dict(self.last_eval)
        online = {k: torch.from_numpy(np.array(v)) for k, v in self._policy.weights().items()}
        try:
            save_checkpoint(self.run_dir / "checkpoints", BEST, {"policy": {"online": online}}, self.cfg.to_yaml(),
                            {"env_steps": env_steps, "topology": self.cfg.topology, "env": self._spaces(),
                             **self.best_eval}, latest=False)
        except CheckpointWriteError as exc:   # a full disk: the previous best stays; counted like any save
            self.failed_saves += 1
            self.note(f"{exc}; the run goes on")

    def _start_background(self, policy: Any, env_steps: int) -> None:
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["returns"] = self._evaluate_returns(policy)
            except BaseException as exc:  # noqa: BLE001 -- re-raised by _record_background, on the caller's thread
                box["error"] = exc
            box["wall_s"] = self.wall_s()

        self._eval_thread = threading.Thread(target=work, name="distdqn-eval", daemon=True)
        self._eval_thread.start()
        self._eval_box, self._eval_env_steps = box, env_steps

    def _record_background(self) -> None:
        """Wait for the evaluation on its thread, if any, and record it."""
        if self._eval_thread is None:
            return
        self._eval_thread.join()
        self._eval_thread, box = None, self._eval_box
        if "error" in box:
            raise box["error"]
        self._record_evaluation(box["returns"], self._eval_env_steps, box["wall_s"])

    def should_stop(self) -> bool:
        """True when the run ends before its env-step budget: solved (with ``eval.stop_when_solved``),
        past ``train.max_wall_s`` of wall clock (resumed time included), or asked to by SIGTERM or
        SIGINT (``signals``: this is the run's safe point)."""
        if signals.stop_requested() is not None:
            self.stop_reason = signals.stop_requested()
        elif self.cfg.eval.stop_when_solved and self.solved_at is not None:
            self.stop_reason = "solved"
        elif self.cfg.train.max_wall_s is not None and self.wall_s() >= self.cfg.train.max_wall_s:
            self.stop_reason = "max_wall_s"
        return self.stop_reason is not None

    def write_json(self, name: str, obj: Any) -> None:
        tmp = self.run_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, self.run_dir / name)

    def write_log(self, lines: list[str]) -> None:
        """Lines for the run's ``run.log`` only (what Ray said while it started), not the terminal."""
        with open(self.run_dir / "run.log", "a") as log:
            log.writelines(f"{line}\n" for line in lines)

    def note(self, message: str) -> None:
        """Something worth telling the user and keeping in the summary (an actor restart, say)."""
        self.notes.append(f"{self.wall_s():.1f}s: {message}")
        print(f"[distdqn] {message}", file=sys.stderr, flush=True)

    # ---- metrics ----
    def due_for_log(self, env_steps: int) -> bool:
        return env_steps >= self.next_log

    def log_if_due(self, env_steps: int, learner_updates: int, **extra: Any) -> None:
        if env_steps >= self.next_log:
            while self.next_log <= env_steps:
                self.next_log += self.cfg.log.interval_env_steps
            self.log(env_steps, learner_updates, **extra)

    def log(self, env_steps: int, learner_updates: int, **extra: Any) -> None:
        row = self.stats.row(env_steps, learner_updates, **extra)
        if self.last_eval is not None:
            row.update(self.last_eval)
            self._eval_logged = True
        row["solved"] = self.solved_at is not None
        self.writer.write(row)
        self._last_logged_env_steps = env_steps

    # ---- checkpoints ----
    def checkpoint_if_due(self, env_steps: int, components: Callable[[], dict[str, Any]]) -> None:
        """A periodic checkpoint, every ``checkpoint.interval_env_steps`` env steps and every
        ``checkpoint.interval_s`` seconds of wall clock; one that fails (a full disk) is reported
        in one line and the run goes on."""
        interval_s = self.cfg.checkpoint.interval_s
        by_wall = interval_s is not None and time.perf_counter() - self._last_save >= interval_s
        if env_steps < self.next_checkpoint and not by_wall:
            return
        while self.next_checkpoint <= env_steps:
            self.next_checkpoint += self.cfg.checkpoint.interval_env_steps
        self._last_save = time.perf_counter()
        try:
            self.save(f"step-{env_steps:012d}", env_steps, components())
        except CheckpointWriteError as exc:
            self.failed_saves += 1
            self._failing += 1
            if self._failing == 1:   # said once; the summary counts them all
                self.note(f"{exc}; the run goes on (saves that fail after it are counted, not reported)")
            return
        if self._failing:
            self.note(f"checkpoint step-{env_steps:012d} was written, after {self._failing} that were not")
            self._failing = 0
        prune_checkpoints(self.run_dir / "checkpoints", "step-", self.cfg.checkpoint.keep)

    def save(self, name: str, env_steps: int, components: dict[str, Any]) -> Path:
        """Checkpoint ``name``: the components, the session's state and the RNGs; its manifest
        records the environment's spaces (checked when the checkpoint is resumed or evaluated)."""
        components = {**components, "session": self.state_dict(), "rng": rng_state()}
        return save_checkpoint(self.run_dir / "checkpoints", name, components, self.cfg.to_yaml(),
                               {"env_steps": env_steps, "topology": self.cfg.topology, "env": self._spaces()})

    def _spaces(self) -> dict[str, Any]:
        """The environment's spaces, for a manifest (checked when a checkpoint is resumed or evaluated)."""
        info = self.info
        return {"id": self.cfg.env.id, "observation_shape": list(info.obs_shape),
                "observation_dtype": str(np.dtype(info.obs_dtype)), "num_actions": int(info.num_actions)}

    def state_dict(self) -> dict[str, Any]:
        return {"wall_s": self.wall_s(), "evaluations": self.evaluations, "last_eval": self.last_eval,
                "solved_at": self.solved_at, "best_eval": self.best_eval, "next_eval": self.next_eval, "next_log": self.next_log,
                "next_checkpoint": self.next_checkpoint, "episodes": self.stats.episodes,
                "recent_episodes": list(self.stats.recent)}

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's session state (``state_dict``): its wall time, evaluations,
        solve, schedule of evaluations, rows and checkpoints, and its episode counts. Before ``open``."""
        self.wall_offset = float(state["wall_s"])
        self.evaluations = int(state["evaluations"])
        self.last_eval, self.solved_at = state["last_eval"], state["solved_at"]
        self.best_eval = state.get("best_eval")
        self.next_eval, self.next_log = state["next_eval"], state["next_log"]
        self.next_checkpoint = state["next_checkpoint"]
        self.resumed = True
        self.stats.episodes = int(state["episodes"])
        self.stats.recent.extend(tuple(r) for r in state["recent_episodes"])

    # ---- the end ----
    def finish(self, weights: dict[str, np.ndarray], env_steps: int, learner_updates: int,
               components: dict[str, Any], interrupted: bool = False, parts: tuple[Any, ...] = ()) -> RunResult:
        """Final evaluation (of ``weights``), final checkpoint, last metrics row and summary.json:
        the run's own fields, then each typed part's (a dataclass, or an object with
        ``summary_fields()``: a topology's counters and summary); a field given twice is an error,
        not an overwrite. A final checkpoint that cannot be written (a full disk) is reported in
        the summary (``final_checkpoint: false``), then raised."""
        self._record_background()
        if self.last_eval is not None and not self._eval_logged:   # (a thread's, the solving one) before the final
            self.log(env_steps, learner_updates)
        if self.last_eval is None or self.last_eval["eval_env_steps"] != env_steps:
            self._record_evaluation(self._evaluate_returns(self._policy_with(weights)), env_steps, self.wall_s())
            self.log(env_steps, learner_updates)
        elif self._last_logged_env_steps != env_steps:
            self.log(env_steps, learner_updates)
        try:
            self.save("final", env_steps, components)
            not_saved = None
        except CheckpointWriteError as exc:
            not_saved = exc
            self.notes.append(f"{self.wall_s():.1f}s: {exc}")
        stop_reason = "interrupted" if interrupted else self.stop_reason or "total_env_steps"
        summary = {
            "topology": self.cfg.topology,
            "env_id": self.cfg.env.id,
            "seed": self.cfg.seed,
            "solved": self.solved_at is not None,
            "solve_threshold": self.threshold,
            "time_to_solve_s": self.solved_at["time_to_solve_s"] if self.solved_at else None,
            "env_steps_to_solve": self.solved_at["env_steps_to_solve"] if self.solved_at else None,
            "final_eval_return_mean": self.last_eval["eval_return_mean"],
            "final_eval_return_std": self.last_eval["eval_return_std"],
            "best_eval_return_mean": self.best_eval["eval_return_mean"] if self.best_eval else None,
            "best_eval_env_steps": self.best_eval["eval_env_steps"] if self.best_eval else None,
            "wall_s": self.wall_s(),
            "env_steps": env_steps,
            "learner_updates": learner_updates,
            "episodes": self.stats.episodes,
            "interrupted": stop_reason in ("interrupted", "terminated"),
            "stop_reason": stop_reason,
            "final_checkpoint": not_saved is None,
            "failed_checkpoints": self.failed_saves + (not_saved is not None),
            "notes": self.notes,
        }
        for part in parts:
            fields = part.summary_fields() if hasattr(part, "summary_fields") else asdict(part)
            for key, value in fields.items():
                if key in summary:
                    raise ValueError(f"summary field {key!r} given twice ({type(part).__name__})")
                summary[key] = value
        try:
            self.write_json("summary.json", summary)
        except OSError:
            if not_saved is None:
                raise
        self.close(summary)
        if not_saved is not None:
            raise not_saved
        return RunResult(summary, self.run_dir)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Close the metrics and the evaluation envs; ``summary``: the run's, for loggers that keep one."""
        if self._eval_thread is not None:   # a run that ends in an error: let its evaluation end first
            self._eval_thread.join(timeout=60)
        if self.writer is not None:
            self.writer.close(summary)
            self.writer = None
        if self.eval_envs is not None:
            self.eval_envs.close()
            self.eval_envs = None
