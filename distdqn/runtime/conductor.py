"""WorkerRun: what the data-parallel topologies (sync_ps, async_ps, allreduce) share around their
loops, so that each topology file holds only who calls what, and when:

    connect to the cluster -> start the worker pool -> (restore) -> loop [topology] -> finish

It owns the RunSession (evaluation, metrics, checkpoints, summary), the WorkerPool, the run's
counters, the accounting of what workers report, worker restarts, and the checkpoint components.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayError

from distdqn.config import Config
from distdqn.envs import EnvInfo
from distdqn.errors import UserError
from distdqn.runtime import components as build
from distdqn.runtime.cluster import connect, require_resources
from distdqn.runtime.pool import WorkerPool
from distdqn.runtime.server import ParameterServer
from distdqn.runtime.session import RunResult, RunSession, seed_everything, set_rng_state


class RunAborted(UserError):
    """A process the run cannot do without died or stalled; the last checkpoint is intact."""


class WorkerRun:
    def __init__(self, cfg: Config, run_dir: Path, info: EnvInfo, owns_target: bool = False,
                 placement: bool = False, actor_class: Any = None, save_workers: bool = True):
        """``save_workers``: checkpoints include each worker's state (replay included); federated
        runs say False, since client experience must never reach the server."""
        w = cfg.workers
        seed_everything(cfg.seed)
        torch.set_num_threads(1)   # the driver's torch work (a server's Adam step) is small: no OpenMP spinning
        self.cfg, self.info = cfg, info
        self.session = RunSession(cfg, run_dir, info)
        cpus, gpus = w.num_workers * w.cpus, w.num_workers * w.gpus
        self.cluster = None
        self.pool: WorkerPool | None = None
        try:
            self.cluster = connect(cfg.cluster.address, num_cpus=math.ceil(cpus),
                                   timeout_s=cfg.cluster.connect_timeout_s)
            require_resources(cpus, gpus, f"{cfg.topology} ({w.num_workers} workers x {w.cpus:g} CPUs, "
                                          f"{w.gpus:g} GPUs)")
            if actor_class is None:
                self.pool = WorkerPool(cfg, info, extra_args=(owns_target,), placement=placement,
                                       timeout_s=w.stall_timeout_s)
            else:
                self.pool = WorkerPool(cfg, info, actor_class, placement=placement, timeout_s=w.stall_timeout_s)
        except BaseException:
            self.close()
            raise
        self.save_workers = save_workers
        self.env_steps = 0
        self.learner_updates = 0
        self.counters: dict[str, Any] = {}   # topology-specific counts, kept in checkpoints and the summary
        self._last_progress = time.perf_counter()
        self.policy = None
        self.interrupted = False
        self._held = [(-1, -1)] * cfg.workers.num_workers   # weight versions each worker was sent

    def weights_for(self, index: int, server: Any) -> Any:
        """The server's weights box for worker ``index``, without what that worker already holds."""
        box = server.box(self._held[index])
        self._held[index] = (box[0], box[2])
        return box

    # ---- start and resume ----
    def restore(self, resume: dict[str, Any] | None) -> dict[str, Any] | None:
        """Restore the workers, counters, session and RNG; returns the checkpoint's learner state."""
        if resume is None:
            return None
        if "workers" in resume:
            self.pool.load_state_dicts(resume["workers"])
        self.session.load_state_dict(resume["session"])
        counters = dict(resume["counters"])
        self.env_steps = counters.pop("env_steps")
        self.learner_updates = counters.pop("learner_updates")
        self.pool.restarts = counters.pop("worker_restarts", 0)
        self.counters.update(counters)
        set_rng_state(resume["rng"])
        return resume["learner"]

    def start_server(self, resume: dict[str, Any] | None) -> ParameterServer:
        """The parameter server (sync_ps, async_ps, federated): a learner in this process, restored
        with the workers, counters and session when resuming."""
        server = ParameterServer(build.build_learner(self.cfg, self.info))
        learner_state = self.restore(resume)
        if learner_state is not None:
            server.learner.load_state_dict(learner_state)
        return server

    def aborted(self, exc: BaseException) -> RunAborted:
        """A Ray failure the run cannot go on from, as one line."""
        text = str(exc).strip()
        return RunAborted(f"{self.cfg.topology}: {type(exc).__name__}: "
                          f"{text.splitlines()[-1][:300] if text else ''}; the last checkpoint is intact")

    def open(self, weights: dict[str, np.ndarray]) -> None:
        """Start metrics, write processes.json (which also waits for every worker to be up)."""
        self.policy = build.build_policy(self.cfg, self.info, weights)
        self.session.open(self.env_steps, self.learner_updates)
        self.session.restore_stats()
        self.record_processes()
        self._last_progress = time.perf_counter()

    def record_processes(self) -> None:
        """processes.json: which process plays which worker, and where (for users and tests)."""
        self.session.write_json("processes.json", self.pool.identities())

    # ---- during the loop ----
    @contextlib.contextmanager
    def conducting(self) -> Iterator[None]:
        """Around a topology's loop: Ctrl-C ends the loop and the run finishes as usual (marked
        interrupted); a Ray failure ends the run with one line."""
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted = True
        except RayError as exc:
            raise self.aborted(exc) from None

    def collect_late(self, late: dict[Any, int], absorb: Callable[[Any], None] | None = None,
                     wait_s: float = 0.0) -> None:
        """Answers of calls that missed their round (``late``: ref -> worker), waiting up to
        ``wait_s`` for the first: their experience counts (``absorb``), their updates, made on old
        weights, are dropped; a worker that died is restarted."""
        if not late:
            return
        if wait_s > 0:
            ray.wait(list(late), num_returns=1, timeout=wait_s)
        for ref in ray.wait(list(late), num_returns=len(late), timeout=0)[0]:
            index = late.pop(ref)
            out = self.pool.result(ref)
            if out is None:
                self.worker_died(index)
            else:
                (absorb or self.absorb)(out)

    def absorb(self, out: dict[str, Any]) -> None:
        """Count what a worker reports: env steps and finished episodes."""
        self.env_steps += out["env_steps"]
        self.session.stats.add_episodes(out["episode_returns"], out["episode_lengths"])
        self._last_progress = time.perf_counter()

    def add_update_metrics(self, sums: dict[str, float], count: int) -> None:
        if count:
            self.session.stats.add_updates(sums, count)

    def worker_died(self, index: int) -> None:
        """Start a new worker in the place of one that died; the run goes on."""
        self.pool.restart(index)
        self._held[index] = (-1, -1)
        self.session.note(f"worker {index} died and was restarted")
        self.record_processes()

    def check_stall(self) -> None:
        limit = self.cfg.workers.stall_timeout_s
        if time.perf_counter() - self._last_progress > limit:
            raise RunAborted(f"{self.cfg.topology}: no worker call finished in {limit:.0f} s")

    def progressed(self) -> None:
        self._last_progress = time.perf_counter()

    def housekeeping(self, weights: Callable[[], dict[str, np.ndarray]],
                     learner_state: Callable[[], dict[str, Any]], **log_extra: Any) -> bool:
        """Evaluate, log and checkpoint when due; True when the run should stop (solved)."""
        s = self.session
        if s.due_for_evaluation(self.env_steps):
            self.policy.set_weights(weights())
        if s.evaluate_if_due(self.policy, self.env_steps):
            return True
        s.log_if_due(self.env_steps, self.learner_updates, worker_restarts=self.pool.restarts, **log_extra)
        s.checkpoint_if_due(self.env_steps, lambda: self.components(learner_state()))
        return False

    def components(self, learner_state: dict[str, Any]) -> dict[str, Any]:
        state = {"learner": learner_state,
                 "counters": {"env_steps": self.env_steps, "learner_updates": self.learner_updates,
                              "worker_restarts": self.pool.restarts, **self.counters}}
        if self.save_workers:
            state["workers"] = self.pool.state_dicts(self.cfg.checkpoint.save_replay)
        return state

    # ---- the end ----
    def finish(self, weights: dict[str, np.ndarray], learner_state: dict[str, Any], pending: Iterable = (),
               **summary: Any) -> RunResult:
        """Final evaluation, checkpoint and summary; calls still ``pending`` are cancelled first (a
        running call of a worker is not interrupted: Ray only drops queued ones)."""
        for ref in pending:
            ray.cancel(ref, force=False)
        self.policy.set_weights(weights)
        return self.session.finish(self.policy, self.env_steps, self.learner_updates,
                                   self.components(learner_state), self.interrupted,
                                   num_workers=self.cfg.workers.num_workers, worker_restarts=self.pool.restarts,
                                   cluster_nodes=self.cluster.num_nodes, **self.counters, **summary)

    def close(self) -> None:
        self.session.close()
        if self.pool is not None:
            self.pool.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
