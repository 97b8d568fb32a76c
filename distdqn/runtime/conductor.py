"""Conductor: what every distributed topology's driver does around its loop, so that a topology
file holds only who calls what, and when:

    connect to the cluster -> start the roles -> (restore) -> open -> loop [topology] -> finish

It owns the RunSession (evaluation, metrics, checkpoints, summary), the run's counters, the roles
(a restartable RolePool and the essential single processes: a learner, a replay), process
records (processes.json), replacing processes that die, the one checkpoint schema (RunState), the
stall deadline, and a one-line abort when an essential role is lost. It is on the control channel
only: data and weights travel between the roles themselves.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayError

from distdqn.checkpoint import restoring
from distdqn.config import Config
from distdqn.core.records import Experience, UpdateStats
from distdqn.envs import EnvInfo, user_module_paths
from distdqn.errors import RunAborted
from distdqn.local import affinity
from distdqn.local.session import RunResult, RunSession, seed_everything, set_rng_state
from distdqn.runtime.cluster import connect, require_custom_resources, require_resources
from distdqn.runtime.messages import RunCounters, RunState
from distdqn.runtime.pool import RolePool
from distdqn.runtime.process import keep_driver_off, process_identity


class Conductor:
    def __init__(self, cfg: Config, run_dir: Path, info: EnvInfo, counters: RunCounters, cpus: float,
                 gpus: float, what: str, stall_timeout_s: float):
        """Connect (or start Ray) and check the cluster can hold ``cpus`` and ``gpus`` (``what``
        says for whom, in the error)."""
        seed_everything(cfg.seed)
        torch.set_num_threads(1)   # the driver's torch work (a server's Adam step) is small: no OpenMP spinning
        self.cfg, self.info, self.counters = cfg, info, counters
        self.stall_timeout_s = stall_timeout_s
        self.session = RunSession(cfg, run_dir, info, background_evaluation=True)
        self.pool: RolePool | None = None            # the restartable role
        self.essential: dict[str, Any] = {}          # name -> handle of roles the run cannot lose
        self._closers: list[Callable[[], None]] = []   # what a topology started, closed first
        self.identities: dict[str, Any] = {}         # role -> process, as in processes.json
        self.interrupted = False
        self._last_progress = time.perf_counter()
        self._driver_cpus: set[int] | None = None     # the driver's CPUs before it kept off the learner's
        self.cluster = None
        try:
            self.cluster = connect(cfg.cluster.address, num_cpus=math.ceil(cpus),
                                   timeout_s=cfg.cluster.connect_timeout_s, py_modules=user_module_paths(cfg.env))
            require_resources(cpus, gpus, what)
            if self.cluster.startup_log:
                self.session.write_log(self.cluster.startup_log)
        except BaseException:
            self.close()
            raise

    # ---- the roles ----
    def start_pool(self, role: str, actor_class: Any, count: int, seed: int, args: Callable[[int, int], tuple],
                   options: dict[str, Any], placement: bool = False) -> RolePool:
        self.pool = RolePool(role, actor_class, count, seed, args, options, placement, self.stall_timeout_s)
        return self.pool

    def start_workers(self, actor_class: Any, *extra_args: Any, placement: bool = False) -> RolePool:
        """The data-parallel workers (or federated clients): worker i gets worker i's config
        (a client's environment variant) and ``(info, i, N, seed, cpus, *extra_args)``."""
        w = self.cfg.workers
        return self.start_pool(
            "worker", actor_class, w.num_workers, self.cfg.seed,
            lambda i, seed: (self.cfg.for_client(i), self.info, i, w.num_workers, seed, w.cpus, *extra_args),
            {"num_cpus": w.cpus, "num_gpus": w.gpus, **({"resources": dict(w.resources)} if w.resources else {})},
            placement)

    def keep_off(self, isolation_refs: list) -> None:
        """The driver (and the Ray instance it started) keeps off the cores apex's learners took."""
        isolations = ray.get(list(isolation_refs), timeout=self.stall_timeout_s)
        self._driver_cpus = keep_driver_off(isolations, self.cluster.started_here)

    # ---- start and resume ----
    def restore(self, resume: dict[str, Any] | None, learner: Any = None) -> RunState | None:
        """The checkpoint's RunState, with the counters, session, RNG, the pool's replicas and (a
        server's) ``learner`` restored."""
        if resume is None:
            return None
        state = RunState.from_components(resume, type(self.counters))
        self.counters = state.counters
        with restoring():   # a part that does not fit (a shape, a missing key) is one line
            if state.replicas is not None and self.pool is not None:
                self.pool.load_state_dicts(state.replicas)
            if self.pool is not None:
                self.pool.restarts = self.counters.restarts
            self.session.resume(resume["session"])
            set_rng_state(resume["rng"])
            if learner is not None:
                learner.load_state_dict(state.learner)
        return state

    def open(self) -> None:
        """Start metrics, write processes.json (which also waits for every process to be up)."""
        self.session.open(self.counters.env_steps, self.counters.learner_updates)
        self.record_processes()
        self._last_progress = time.perf_counter()

    def record_processes(self, wait: bool = True) -> None:
        """processes.json: which process plays which role, and where (for users and tests); with
        apex.replay_host=learner, "replay" and "learner" are the same process. ``wait=False``: a
        pool process that is still starting is filled in by a later call (``housekeeping``)."""
        refs = {name: handle.identity.remote() for name, handle in self.essential.items()
                if self.identities.get(name) is None}   # asked once: the learner may be busy training
        self.identities.update({name: _get_or_none(ref) for name, ref in refs.items()})
        if self.pool is not None:
            self.identities.update(self.pool.identities(wait))
        self.identities["driver"] = process_identity()
        self.session.write_json("processes.json", self.identities)

    # ---- during the loop ----
    @contextlib.contextmanager
    def conducting(self) -> Iterator[None]:
        """Around a topology's loop: Ctrl-C ends the loop and the run finishes as usual (marked
        interrupted); a Ray failure ends the run with one line."""
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted = True
        except RayActorError as exc:   # a process died under a call the loop made: name the role
            raise self.essential_failure(exc) from None
        except RayError as exc:
            raise self.aborted(exc) from None

    def absorb(self, experience: Experience) -> None:
        """Count what a process reports: env steps and ended episodes."""
        self.counters.env_steps += experience.env_steps
        self.counters.non_finite_steps += experience.non_finite_steps
        self.session.stats.add_episodes(experience.episodes)
        self._last_progress = time.perf_counter()

    def add_updates(self, updates: UpdateStats) -> None:
        self.session.stats.add_updates(updates)

    def replace(self, index: int) -> None:
        """Start a new process in the place of the pool's process ``index``, which died; the run goes on."""
        self.pool.restart(index)
        self.counters.restarts = self.pool.restarts
        self.session.note(f"{self.pool.role} {index} died and was restarted")
        self.record_processes(wait=False)   # the new process is not waited for: the others go on

    def next_call(self, calls: CallsInFlight) -> tuple[Any, str, int, int]:
        """The next call of ``calls`` to finish, as (ref, role, index, generation); the run
        aborts if none finishes within the stall deadline."""
        while True:
            done = calls.next(timeout_s=1.0)
            if done is not None:
                self.progressed()
                return done
            self.check_stall()

    def check_stall(self) -> None:
        if time.perf_counter() - self._last_progress > self.stall_timeout_s:
            raise RunAborted(f"{self.cfg.topology}: no call finished in {self.stall_timeout_s:.0f} s")

    def progressed(self) -> None:
        self._last_progress = time.perf_counter()

    def alive(self) -> dict[str, bool]:
        """Whether each essential role's process still answers (its ``ping``, which runs beside
        its work: an identity call would queue behind a train call that waits for the driver)."""
        return {name: _answers(handle) for name, handle in self.essential.items()}

    def essential_failure(self, exc: BaseException) -> RunAborted:
        """The run cannot go on: name the essential role that is gone (or the failure)."""
        dead = [name for name, alive in self.alive().items() if not alive]
        who = f"the {' and '.join(dict.fromkeys(dead))} died" if dead else "a call failed"
        return RunAborted(f"{self.cfg.topology}: {who} ({_first_line(exc)}); the last checkpoint is intact")

    def aborted(self, exc: BaseException) -> RunAborted:
        """A Ray failure the run cannot go on from, as one line."""
        return RunAborted(f"{self.cfg.topology}: {type(exc).__name__}: {_first_line(exc)}; "
                          f"the last checkpoint is intact")

    def housekeeping(self, weights: Callable[[], dict[str, np.ndarray]], state: Callable[[], RunState],
                     log_extra: Callable[[], dict[str, Any]] = dict) -> bool:
        """Evaluate, log and checkpoint when due; True when the run should stop (solved, or out of
        time). An evaluation runs on a thread while the caller goes on conducting (its roles kept
        busy); ``log_extra`` gives a row's extra fields (called only when a row is due)."""
        s, c = self.session, self.counters
        if self.pool is not None and self.pool.starting:   # a restarted process's identity, once it is up
            self.record_processes(wait=False)
        if s.evaluate_if_due(c.env_steps, weights):
            return True
        if s.due_for_log(c.env_steps):
            s.log_if_due(c.env_steps, c.learner_updates, **{self._restarts_key(): c.restarts, **log_extra()})
        s.checkpoint_if_due(c.env_steps, lambda: state().components())
        return False

    def add_closer(self, close: Callable[[], None]) -> None:
        """Something a topology started that must end with the run, however it ends (closed first,
        newest first): a channel's shared memory, say."""
        self._closers.append(close)

    def replicas(self) -> list[dict[str, Any] | None]:
        """Every worker's replica state (replay included when checkpoint.save_replay)."""
        return self.pool.state_dicts(self.cfg.checkpoint.save_replay)

    # ---- the end ----
    def finish(self, weights: dict[str, np.ndarray], state: RunState, *parts: Any) -> RunResult:
        """Final evaluation, checkpoint and summary: the run's, its roles', the counters' and
        the topology's typed ``parts``."""
        if self.pool is not None and self.pool.starting:
            self.record_processes()
        c = self.counters
        roles = RoleSummary(self.pool.role if self.pool is not None else "worker",
                            self.pool.count if self.pool is not None else 0, c.restarts, self.cluster.num_nodes)
        return self.session.finish(weights, c.env_steps, c.learner_updates, state.components(), self.interrupted,
                                   (roles, c, *parts))

    def _restarts_key(self) -> str:
        return f"{self.pool.role if self.pool is not None else 'worker'}_restarts"

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()
        self.session.close()
        if self.pool is not None:
            self.pool.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
        if self._driver_cpus is not None:
            affinity.pin(self._driver_cpus)


@dataclass(frozen=True)
class RoleSummary:
    """The summary's part about the run's processes: how many of the restartable role, how many
    of them were replaced, on how many nodes."""

    role: str
    count: int
    restarts: int
    cluster_nodes: int

    def summary_fields(self) -> dict[str, Any]:
        fields = {f"{self.role}_restarts": self.restarts, "cluster_nodes": self.cluster_nodes}
        if self.count:
            fields[f"num_{self.role}s"] = self.count
        return fields


def worker_conductor(cfg: Config, run_dir: Path, info: EnvInfo, counters: RunCounters) -> Conductor:
    """A Conductor sized for ``workers.num_workers`` workers (or clients) of ``workers.cpus`` and
    ``workers.gpus`` each."""
    w = cfg.workers
    job = Conductor(cfg, run_dir, info, counters, w.num_workers * w.cpus, w.num_workers * w.gpus,
                    f"{cfg.topology} ({w.num_workers} workers x {w.cpus:g} CPUs, {w.gpus:g} GPUs)",
                    w.stall_timeout_s)
    try:
        require_custom_resources({k: v * w.num_workers for k, v in w.resources.items()},
                                 f"workers.resources ({w.num_workers} workers x {dict(w.resources)})")
    except BaseException:
        job.close()
        raise
    return job


class CallsInFlight:
    """Calls kept queued for the roles, so that none idles waiting for the driver. Each call
    carries its process's generation: answers of a process that was replaced are ignored."""

    def __init__(self):
        self.calls: dict[Any, tuple[str, int, int]] = {}

    def add(self, ref: Any, role: str, index: int = 0, generation: int = 0) -> None:
        self.calls[ref] = (role, index, generation)

    def next(self, timeout_s: float) -> tuple[Any, str, int, int] | None:
        """The first call to finish within ``timeout_s`` as (ref, role, index, generation), or None."""
        ready, _ = ray.wait(list(self.calls), num_returns=1, timeout=timeout_s)
        if not ready:
            return None
        return (ready[0], *self.calls.pop(ready[0]))

    def of(self, role: str) -> list:
        return [ref for ref, (r, _, _) in self.calls.items() if r == role]


def _get_or_none(ref: Any) -> Any:
    try:
        return ray.get(ref, timeout=30)
    except (RayActorError, GetTimeoutError):
        return None


def _answers(handle: Any, timeout_s: float = 30.0) -> bool:
    """Whether an actor answers its ``ping`` within ``timeout_s``. "Temporarily unavailable" (Ray
    lost its connection, as can happen on an overloaded node) is asked again until the deadline;
    only a dead actor or the deadline says no."""
    deadline = time.perf_counter() + timeout_s
    while True:
        try:
            ray.get(handle.ping.remote(), timeout=max(0.1, deadline - time.perf_counter()))
            return True
        except ActorUnavailableError:
            if time.perf_counter() >= deadline:
                return False
            time.sleep(0.5)
        except (RayActorError, GetTimeoutError):
            return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1][:300] if text else type(exc).__name__
