"""apex: distributed prioritized experience replay (Horgan et al. 2018, "Distributed Prioritized
Experience Replay", ICLR).

    ExperienceActor 0 ---+   data: n-step transitions + initial priorities,         +----------------+
    ExperienceActor 1 ---+-- one insert in flight per actor (answer: accepted?) --> | replay         |
          ...            |                                                          | (rate-limited) |
    ExperienceActor N-1 -+                                                          |  ^   |         |
          ^                                                                         |  |   v batches |
          +---- weights: each actor's client asks for the newest publication -------| LearnerWorker  |
                once per insert (Weights(version, [ref]) in the object store)       +----------------+

    The replay lives in the learner's process (apex.replay_host=learner: sampling and priority
    updates are calls within the process, inserts run on threads beside the updates) or in a
    ReplayServer process of its own (replay_host=process). The learner publishes every
    apex.weight_sync_period updates; its training thread has cores of its own on its node
    (apex.isolate_learner): the run's other processes and threads there keep off them.

    With learner.model_parallel = P > 1 the learner is P processes on its node (ModelParallelRank
    1 .. P-1 beside it, tensor-parallel: local/model_parallel.py); to everything else it is one.

    The driver (this function) only conducts: it keeps apex.calls_in_flight calls queued for every
    actor and for the learner, evaluates on a thread, logs, checkpoints, and replaces actors that
    die. Each of the num_actors * num_envs sub-environments explores with its own fixed
    epsilon_i = 0.4^(1 + 7 i / (count - 1)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError

from distdqn.checkpoint import restoring
from distdqn.config import Config
from distdqn.core.schedules import per_actor_epsilons
from distdqn.envs import EnvInfo
from distdqn.local.session import RunResult
from distdqn.runtime.conductor import CallsInFlight, Conductor
from distdqn.runtime.messages import ActorReport, RunCounters, RunState
from distdqn.runtime.roles.experience_actor import ExperienceActor, blocks_per_insert
from distdqn.runtime.roles.learner import LearnerWorker
from distdqn.runtime.roles.model_parallel_rank import split_learner
from distdqn.runtime.roles.replay_server import ReplayServer
from distdqn.runtime.weights import fetch


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    a = cfg.apex
    job = _conductor(cfg, run_dir, info)
    try:
        # ---- build: the replay (the learner's process, or its own), the learner, actors (spread) ----
        learner, replay, actors = _build(cfg, info, job)

        # ---- resume: learner and replay from the checkpoint (actors start fresh episodes) ----
        state = job.restore(resume)
        if state is not None:
            with restoring():
                ray.get([learner.load_state_dict.remote(state.learner)]
                        + ([replay.load_replay_state.remote(state.replay)] if state.replay else []),
                        timeout=a.stall_timeout_s)
        weights = ray.get(learner.weights.remote(), timeout=a.stall_timeout_s)
        job.open()
        ledger = InsertLedger(job.counters, a.num_actors)

        # ---- loop: keep every actor and the learner busy; conduct between their calls ----
        blocks_per_call = max(a.blocks_per_call, blocks_per_insert(cfg))   # at least one insert per call
        calls, lags, busy = CallsInFlight(), np.zeros(a.num_actors), {"learner_busy_s": 0.0, "learner_step_s": 0.0}
        unreachable: dict[int, float] = {}   # actor -> since when its calls come back unreachable
        for _ in range(a.calls_in_flight):
            for i in range(a.num_actors):
                _collect(calls, actors, i, blocks_per_call)
            calls.add(learner.train.remote(a.updates_per_call, job.counters.env_steps), "learner")
        with job.conducting():
            while job.counters.env_steps < cfg.train.total_env_steps:
                ref, role, i, generation = job.next_call(calls)
                if role == "actor" and generation == actors.generations[i]:
                    report = _actor_report(job, ref, unreachable, i)
                    if report is UNREACHABLE:   # its call lost on the way (a link down): asked again
                        pass
                    elif report is None:   # the actor died: a new one takes its place, the run goes on
                        ledger.killed(i)
                        unreachable.pop(i, None)
                        job.replace(i)
                        for _ in range(a.calls_in_flight - 1):
                            _collect(calls, actors, i, blocks_per_call)
                    else:
                        unreachable.pop(i, None)
                        job.absorb(report.experience)
                        ledger.reported(i, report)
                        lags[i] = report.weight_lag if report.weight_lag is not None else lags[i]
                    _collect(calls, actors, i, blocks_per_call)
                elif role == "learner":
                    report = _learner_report(job, ref)
                    job.counters.learner_updates = report.learner_updates
                    job.add_updates(report.updates)
                    busy["learner_busy_s"] += report.busy_s
                    busy["learner_step_s"] += report.step_s
                    weights = report.weights or weights
                    calls.add(learner.train.remote(a.updates_per_call, job.counters.env_steps), "learner")
                if job.housekeeping(lambda w=weights: fetch(w.box), lambda: _state(job, learner, replay), lambda: {
                        "weight_lag_updates": float(lags.mean()), **busy,
                        **ray.get(replay.replay_stats.remote(), timeout=a.stall_timeout_s)}):
                    break

        # ---- tear down: final weights, evaluation, checkpoint, summary ----
        return _finish(job, calls, actors, learner, replay, ledger)
    finally:
        job.close()


@dataclass
class ApexCounters(RunCounters):
    """The run's counts, and what the actors' reports say of their inserts: ``env_steps`` (sent)
    = ``accepted_env_steps`` + those still unacknowledged. A killed actor's unacknowledged env
    steps (its insert in flight) move to ``unacknowledged_at_kills_env_steps``: the replay may or
    may not have taken them, and what it collected after its last report is counted nowhere."""

    accepted_env_steps: int = 0                  # inserts the replay acknowledged to their actor
    unacknowledged_at_kills_env_steps: int = 0   # sent, unacknowledged when its actor was killed


@dataclass(frozen=True)
class ApexSummary:
    actor_nodes: dict[str, int]              # actors per node (by the last process of each)
    replay_inserted_env_steps: int           # what the replay took in
    unacknowledged_at_end_env_steps: int     # sent by living actors, not (yet) acknowledged


class InsertLedger:
    """Each actor's env steps sent and not yet acknowledged, from its reports, into ApexCounters."""

    def __init__(self, counters: ApexCounters, num_actors: int):
        self.counters = counters
        self.pending = [0] * num_actors

    def reported(self, i: int, report: ActorReport) -> None:
        self.counters.accepted_env_steps += report.accepted_env_steps
        self.pending[i] += report.experience.env_steps - report.accepted_env_steps

    def killed(self, i: int) -> None:
        self.counters.unacknowledged_at_kills_env_steps += self.pending[i]
        self.pending[i] = 0

    @property
    def unacknowledged(self) -> int:
        """The living actors' env steps sent and not (yet) acknowledged."""
        return sum(self.pending)


def _finish(job: Conductor, calls: CallsInFlight, actors: Any, learner: Any, replay: Any,
            ledger: InsertLedger) -> RunResult:
    """Stop the actors, then the final weights, evaluation, checkpoint and summary (with the
    replay's inserts beside the actors' acknowledged ones). The learner's queued calls are let
    finish (bounded), never cancelled: Ray's ordered queue of an actor with concurrency groups
    would wait 30 s for a cancelled call's sequence number."""
    timeout = job.cfg.apex.stall_timeout_s
    ray.wait(calls.of("learner"), num_returns=len(calls.of("learner")), timeout=timeout)
    actors.shutdown()
    weights = ray.get(learner.weights.remote(), timeout=timeout)
    inserted = ray.get(replay.replay_stats.remote(), timeout=timeout)["inserted_env_steps"]
    nodes = [p["node_id"] for name, p in job.identities.items() if name.startswith("actor") and p]
    final_state = _state(job, learner, replay)
    ray.get(learner.release_ranks.remote(), timeout=timeout)
    return job.finish(fetch(weights.box), final_state, ApexSummary({n: nodes.count(n) for n in set(nodes)}, inserted,
                                                                   ledger.unacknowledged))


def _conductor(cfg: Config, run_dir: Path, info: EnvInfo) -> Conductor:
    """The run's conductor, with the cluster resources of the replay, the learner's ranks and the actors."""
    a = cfg.apex
    replay_cpus = a.replay_cpus if a.replay_host == "process" else 0.0
    ranks = cfg.learner.model_parallel   # the learner's processes (each with learner_cpus, learner_gpus)
    return Conductor(cfg, run_dir, info, ApexCounters(),
                     replay_cpus + ranks * a.learner_cpus + a.num_actors * a.actor_cpus, ranks * a.learner_gpus,
                     f"apex (replay {replay_cpus:g} + learner {ranks} x {a.learner_cpus:g} + "
                     f"{a.num_actors} actors x {a.actor_cpus:g} CPUs)", a.stall_timeout_s)


def _collect(calls: CallsInFlight, actors: Any, i: int, blocks: int) -> None:
    """Queue one more collect call on actor ``i`` (tagged with its generation: a replaced actor's
    answers are told apart)."""
    calls.add(actors.handles[i].collect.remote(blocks), "actor", i, actors.generations[i])


def _build(cfg: Config, info: EnvInfo, job: Conductor) -> tuple[Any, Any, Any]:
    """The replay (in the learner's process, or a ReplayServer of its own), the learner (with its
    model-parallel ranks) and the actors' pool; the learner's training thread gets cores of its own."""
    a = cfg.apex
    replay_cpus = a.replay_cpus if a.replay_host == "process" else 0.0
    ranks = cfg.learner.model_parallel
    server = (ReplayServer.options(num_cpus=replay_cpus).remote(cfg, info, cfg.seed + 1)
              if a.replay_host == "process" else None)
    learner = LearnerWorker.options(num_cpus=a.learner_cpus, num_gpus=a.learner_gpus).remote(
        cfg, info, server, cfg.seed + 2)
    replay = server or learner
    job.essential = {"learner": learner, "replay": replay}
    isolation = learner.isolate.remote(int(np.ceil(a.learner_cpus)) * ranks) if a.isolate_learner else None
    if ranks > 1:   # learner.model_parallel: the learner's other ranks, on its node, on its cores
        job.essential.update(split_learner(cfg, info, learner, isolation, a.stall_timeout_s))
    if server is not None:
        server.keep_off.remote(isolation)
    epsilons = per_actor_epsilons(a.num_actors * cfg.env.num_envs, a.base_epsilon, a.epsilon_alpha)
    actors = job.start_pool("actor", ExperienceActor, a.num_actors, cfg.seed + 1000, lambda i, seed: (
        cfg, info, replay, learner, epsilons.reshape(a.num_actors, -1)[i], seed, isolation),
        {"num_cpus": a.actor_cpus})
    if isolation is not None:
        job.keep_off(isolation)
    return learner, replay, actors


UNREACHABLE = object()
"""An actor's call that Ray could not deliver or answer (ActorUnavailableError: the connection to
its host broke; the call may or may not have run). The actor may well be alive: a cut link heals."""


def _actor_report(job: Conductor, ref: Any, unreachable: dict[int, float], i: int) -> Any:
    """Actor ``i``'s report; UNREACHABLE while its host has not been reachable for less than the
    stall timeout (the call is asked again); None if the actor died or stayed unreachable that
    long; a failure of the learner or replay it talks to ends the run with one line."""
    try:
        return ray.get(ref, timeout=job.stall_timeout_s)
    except ActorUnavailableError:
        since = unreachable.setdefault(i, time.monotonic())
        if time.monotonic() - since < job.stall_timeout_s:
            time.sleep(0.2)   # not a busy loop of refused calls while the link is down
            return UNREACHABLE
        return None
    except RayError as exc:
        if isinstance(exc, RayActorError) and all(job.alive().values()):
            return None
        raise job.essential_failure(exc) from None


def _learner_report(job: Conductor, ref: Any) -> Any:
    try:
        return ray.get(ref, timeout=job.stall_timeout_s)
    except RayError as exc:
        raise job.essential_failure(exc) from None


def _state(job: Conductor, learner: Any, replay: Any) -> RunState:
    """The learner, the counters and (checkpoint.save_replay) the replay with its rate limiter."""
    save_replay = job.cfg.checkpoint.save_replay
    states = ray.get([learner.state_dict.remote()] + ([replay.replay_state.remote()] if save_replay else []),
                     timeout=job.stall_timeout_s)
    return RunState(states[0], job.counters, replay=states[1] if save_replay else None)
