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

    Past one learner and one replay (runtime/shards.py, runtime/learner_group.py):

    actors on host A --insert--> shard A --+   draws split by priority mass,   +--> learner 0 --weights--> actors
    actors on host B --insert--> shard B --+-- priorities back to their shard --+--> learner 1
                                                                    gradients averaged: identical replicas

    apex.replay_shards ReplayServers (``per_host``: one on every node), each actor inserting into
    one on its own node; apex.num_learners learners in a group, each drawing its share of every
    batch from all shards so that the batch follows one replay's distribution, averaging every
    update's gradient; learner 0 publishes. Before anything starts, the processes are placed on
    the cluster's nodes on paper (runtime/placement.py): a run that cannot be placed is refused.

    With learner.model_parallel = P > 1 the learner is P processes on its node (ModelParallelRank
    1 .. P-1 beside it, tensor-parallel: local/model_parallel.py); to everything else it is one.

    The driver (this function) only conducts: it keeps apex.calls_in_flight calls queued for every
    actor and for every learner, evaluates on a thread, logs, checkpoints, and replaces actors that
    die (a lost learner or shard ends the run in one line). Each of the num_actors * num_envs
    sub-environments explores with its own fixed epsilon_i = 0.4^(1 + 7 i / (count - 1)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError

from distdqn.checkpoint import restoring
from distdqn.config import Config
from distdqn.core.schedules import per_actor_epsilons
from distdqn.envs import EnvInfo
from distdqn.errors import CheckpointError
from distdqn.local.session import RunResult
from distdqn.runtime import group, learner_group, shards
from distdqn.runtime.conductor import CallsInFlight, Conductor
from distdqn.runtime.group import GroupSpec
from distdqn.runtime.messages import ActorReport, LearnerTimes, ReplayStats, RunCounters, RunState
from distdqn.runtime.placement import Demand, cluster_nodes, require_placement
from distdqn.runtime.pool import RolePool
from distdqn.runtime.roles.experience_actor import ExperienceActor, blocks_per_insert
from distdqn.runtime.roles.learner import LearnerWorker
from distdqn.runtime.roles.model_parallel_rank import split_learner
from distdqn.runtime.roles.replay_server import ReplayServer
from distdqn.runtime.weights import fetch


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    a = cfg.apex
    job = _conductor(cfg, run_dir, info)
    procs = ApexProcesses()
    job.add_closer(procs.close)   # closed before Ray is (a Ray call after that would start it again)
    try:
        # ---- build: placed on paper first; the replay (or its shards), the learners, the actors ----
        _build(cfg, info, job, procs, resume)

        # ---- resume: learners and replay (every shard) from the checkpoint; actors start afresh ----
        _restore(job, procs, job.restore(resume))
        weights = ray.get(procs.leader.weights.remote(), timeout=a.stall_timeout_s)
        job.open()
        ledger, times = InsertLedger(job.counters, a.num_actors), LearnerTimes()

        # ---- loop: keep every actor and every learner busy; conduct between their calls ----
        blocks_per_call = max(a.blocks_per_call, blocks_per_insert(cfg))   # at least one insert per call
        calls, lags = CallsInFlight(), np.zeros(a.num_actors)
        unreachable: dict[int, float] = {}   # actor -> since when its calls come back unreachable
        for _ in range(a.calls_in_flight):
            for i in range(a.num_actors):
                _collect(calls, procs.actors, i, blocks_per_call)
            for r in range(a.num_learners):
                _train(calls, procs, r, job)
        with job.conducting():
            while job.counters.env_steps < cfg.train.total_env_steps:
                ref, role, i, generation = job.next_call(calls)
                if role == "actor" and generation == procs.actors.generations[i]:
                    report = _actor_report(job, ref, unreachable, i)
                    if report is UNREACHABLE:   # its call lost on the way (a link down): asked again
                        pass
                    elif report is None:   # the actor died: a new one takes its place, the run goes on
                        ledger.killed(i)
                        unreachable.pop(i, None)
                        job.replace(i)
                        for _ in range(a.calls_in_flight - 1):
                            _collect(calls, procs.actors, i, blocks_per_call)
                    else:
                        unreachable.pop(i, None)
                        job.absorb(report.experience)
                        ledger.reported(i, report)
                        lags[i] = report.weight_lag if report.weight_lag is not None else lags[i]
                    _collect(calls, procs.actors, i, blocks_per_call)
                elif role == "learner":
                    report = _learner_report(job, ref)
                    if i == 0:   # a group's learners make the same updates: learner 0 speaks for them
                        job.counters.learner_updates = report.learner_updates
                        job.add_updates(report.updates)
                        times.add(report)
                        weights = report.weights or weights
                    _train(calls, procs, i, job)
                if job.housekeeping(lambda w=weights: fetch(w.box), lambda: _state(job, procs),
                                    lambda: _log_row(procs, times, lags, a.stall_timeout_s)):
                    break

        # ---- tear down: final weights, evaluation, checkpoint, summary ----
        return _finish(job, calls, procs, ledger)
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
    replay_inserted_env_steps: int           # what the replay took in (every shard)
    unacknowledged_at_end_env_steps: int     # sent by living actors, not (yet) acknowledged
    num_learners: int                        # apex.num_learners
    replay_shards: int                       # the replay's shards (1: one replay)
    learner_hashes: list[str] | None = None  # each learner's weights_hash at the end (a group's)
    learners_identical: bool | None = None   # a group's replicas all the same at the end


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


@dataclass
class ApexProcesses:
    """The run's processes: ``replays`` are the replay's hosts (the learner itself, one
    ReplayServer, or the shards) on ``replay_nodes`` (None: not pinned); ``sharded`` when the
    learners sample through shards.ShardedSampler (more than one shard, or more than one learner)."""

    learners: list = field(default_factory=list)
    replays: list = field(default_factory=list)
    replay_nodes: list = field(default_factory=list)
    sharded: bool = False
    actors: Any = None
    learner_pool: RolePool | None = None   # learners beyond one, in a placement group
    group_spec: GroupSpec | None = None    # their group (its shared memory removed at the end)

    @property
    def leader(self) -> Any:
        return self.learners[0]

    def replay_stats(self, timeout_s: float) -> ReplayStats:
        return ReplayStats.total(ray.get([h.replay_stats.remote() for h in self.replays], timeout=timeout_s))

    def close(self) -> None:
        if self.learner_pool is not None and ray.is_initialized():
            self.learner_pool.shutdown()
        learner_group.remove(self.group_spec)


def _conductor(cfg: Config, run_dir: Path, info: EnvInfo) -> Conductor:
    """The run's conductor, with the cluster resources of the replay (or shards: one per host
    counts as one here, the pre-flight counts the hosts), the learners' ranks and the actors."""
    a = cfg.apex
    hosts = 1 if a.replay_shards == "per_host" else a.replay_shards
    replay_cpus = a.replay_cpus * hosts if a.replay_host == "process" else 0.0
    ranks = cfg.learner.model_parallel * a.num_learners   # learner processes (each learner_cpus, learner_gpus)
    return Conductor(cfg, run_dir, info, ApexCounters(),
                     replay_cpus + ranks * a.learner_cpus + a.num_actors * a.actor_cpus, ranks * a.learner_gpus,
                     f"apex (replay {replay_cpus:g} + learners {ranks} x {a.learner_cpus:g} + "
                     f"{a.num_actors} actors x {a.actor_cpus:g} CPUs)", a.stall_timeout_s)


def _build(cfg: Config, info: EnvInfo, job: Conductor, procs: ApexProcesses, resume: dict | None) -> None:
    """Place the run on paper, then start the replay (in the learner's process, a ReplayServer
    of its own, or the shards), the learners (with their model-parallel ranks, or their group)
    and the actors' pool; each learner's training thread gets cores of its own."""
    a = cfg.apex
    nodes = cluster_nodes()
    procs.sharded = a.replay_shards != 1 or a.num_learners > 1
    placement = shards.shard_nodes(cfg, [n.node_id for n in nodes]) if procs.sharded else []
    _check_resumable(resume, len(placement))
    require_placement(_demands(cfg, placement), "apex", nodes)
    if procs.sharded:
        procs.replays = shards.start_shards(cfg, info, placement)
        procs.replay_nodes = _nodes_of(procs.replays, a.stall_timeout_s)
    elif a.replay_host == "process":
        procs.replays = [ReplayServer.options(num_cpus=a.replay_cpus).remote(cfg, info, cfg.seed + 1)]
    isolations = _start_learners(cfg, info, job, procs)
    if not procs.replays:   # hosted by the learner
        procs.replays = [procs.leader]
    procs.replay_nodes = procs.replay_nodes or [None] * len(procs.replays)
    job.essential.update({_numbered("replay", k): h for k, h in enumerate(procs.replays)})
    for server in procs.replays if procs.replays[0] is not procs.leader else []:
        server.keep_off.remote(isolations)
    epsilons = per_actor_epsilons(a.num_actors * cfg.env.num_envs, a.base_epsilon, a.epsilon_alpha)
    procs.actors = job.start_pool("actor", ExperienceActor, a.num_actors, cfg.seed + 1000, lambda i, seed: (
        cfg, info, i, procs.replays, procs.replay_nodes, procs.leader, epsilons.reshape(a.num_actors, -1)[i],
        seed, isolations), {"num_cpus": a.actor_cpus})
    if isolations:
        job.keep_off(isolations)


def _start_learners(cfg: Config, info: EnvInfo, job: Conductor, procs: ApexProcesses) -> list:
    """The learners: one (with its model-parallel ranks), or a group in a placement group, joined
    and given learner 0's weights. Returns their isolations' references (empty: not isolated)."""
    a = cfg.apex
    options = {"num_cpus": a.learner_cpus, "num_gpus": a.learner_gpus}
    replays = procs.replays or None
    if a.num_learners == 1:
        procs.learners = [LearnerWorker.options(**options).remote(cfg, info, replays, cfg.seed + 2)]
        job.essential["learner"] = procs.leader
        ranks = cfg.learner.model_parallel
        isolation = procs.leader.isolate.remote(int(np.ceil(a.learner_cpus)) * ranks) if a.isolate_learner else None
        if ranks > 1:   # learner.model_parallel: the learner's other ranks, on its node, on its cores
            job.essential.update(split_learner(cfg, info, procs.leader, isolation, a.stall_timeout_s))
        return [isolation] if isolation is not None else []
    procs.learner_pool = RolePool("learner", LearnerWorker, a.num_learners, cfg.seed + 2, lambda r, seed: (
        cfg, info, replays, seed, r, a.num_learners), options, placement=a.learner_cpus + a.learner_gpus > 0,
        timeout_s=a.stall_timeout_s)
    procs.learners = procs.learner_pool.handles
    job.essential.update({_numbered("learner", r): h for r, h in enumerate(procs.learners)})
    nodes = [p["node_id"] for p in procs.learner_pool.identities().values()]
    isolations = []
    if a.isolate_learner:   # one block of cores per learner on its node, all of them or none
        isolations = [h.isolate.remote(int(np.ceil(a.learner_cpus)), nodes[:r].count(nodes[r]), nodes.count(nodes[r]))
                      for r, h in enumerate(procs.learners)]
    cuda = a.learner_gpus > 0 and cfg.learner.device != "cpu"
    procs.group_spec = group.form_group(procs.learners, a.group_backend, cuda, a.stall_timeout_s,
                                        "apex.group_backend", "apex's learners")
    first = ray.get(procs.leader.state_dict.remote(), timeout=a.stall_timeout_s)
    ray.get([h.load_state_dict.remote(first) for h in procs.learners[1:]], timeout=a.stall_timeout_s)
    return isolations


def _demands(cfg: Config, placement: list[str | None]) -> list[Demand]:
    """Every process the run starts, for the pre-flight (runtime/placement.py)."""
    a = cfg.apex
    ranks = cfg.learner.model_parallel
    together = "the learners (apex.group_backend shm)" if a.group_backend == "shm" else None
    learners = [Demand(_numbered("learner", r), a.learner_cpus * ranks, a.learner_gpus * ranks, group=together)
                for r in range(a.num_learners)]
    replays = ([Demand(_numbered("replay shard ", k), a.replay_cpus, node=node) for k, node in enumerate(placement)]
               if placement else [Demand("replay", a.replay_cpus)] if a.replay_host == "process" else [])
    return learners + replays + [Demand(f"actor{i}", a.actor_cpus) for i in range(a.num_actors)]


def _check_resumable(resume: dict[str, Any] | None, num_shards: int) -> None:
    """A checkpoint's replay is resumed as it was saved, one replay or as many shards (``num_shards``
    0: not sharded); a different number of learners is fine: they are one logical learner."""
    if resume is None or ("replay" not in resume and "replay_shards" not in resume):
        return   # saved without its replay (checkpoint.save_replay false): the shards start empty
    saved, wanted = len(resume.get("replay_shards") or [None]), max(num_shards, 1)
    if saved != wanted:
        raise CheckpointError(f"apex.replay_shards: the checkpoint holds {saved} replay shard(s), this run "
                              f"would have {wanted}; resume with apex.replay_shards={saved}")


def _restore(job: Conductor, procs: ApexProcesses, state: RunState | None) -> None:
    if state is None:
        return
    calls = [h.load_state_dict.remote(state.learner) for h in procs.learners]
    parts = state.replay_shards or [state.replay] * len(procs.replays)
    calls += [h.load_replay_state.remote(part) for h, part in zip(procs.replays, parts, strict=True) if part]
    with restoring():
        ray.get(calls, timeout=job.cfg.apex.stall_timeout_s)


def _numbered(role: str, index: int) -> str:
    """processes.json's names: learner, learner1, ...; replay, replay1, ... (index 0 unnumbered)."""
    return role.strip() if index == 0 else f"{role}{index}"


def _nodes_of(handles: list, timeout_s: float) -> list[str]:
    return [p["node_id"] for p in ray.get([h.identity.remote() for h in handles], timeout=timeout_s)]


def _collect(calls: CallsInFlight, actors: Any, i: int, blocks: int) -> None:
    """Queue one more collect call on actor ``i`` (tagged with its generation: a replaced actor's
    answers are told apart)."""
    calls.add(actors.handles[i].collect.remote(blocks), "actor", i, actors.generations[i])


def _train(calls: CallsInFlight, procs: ApexProcesses, r: int, job: Conductor) -> None:
    """Queue one more train call on learner ``r`` (a group's learners get the same calls)."""
    calls.add(procs.learners[r].train.remote(job.cfg.apex.updates_per_call, job.counters.env_steps), "learner", r)


def _log_row(procs: ApexProcesses, times: LearnerTimes, lags: np.ndarray, timeout_s: float) -> dict[str, float]:
    """A metrics row's apex fields: weights' lag, the learner's times, the replay's counts."""
    return {"weight_lag_updates": float(lags.mean()), **times.row(), **procs.replay_stats(timeout_s).row()}


UNREACHABLE = object()
"""An actor's call that Ray could not deliver or answer (ActorUnavailableError: the connection to
its host broke; the call may or may not have run). The actor may well be alive: a cut link heals."""


def _actor_report(job: Conductor, ref: Any, unreachable: dict[int, float], i: int) -> Any:
    """Actor ``i``'s report; UNREACHABLE while its host has not been reachable for less than the
    stall timeout (the call is asked again); None if the actor died or stayed unreachable that
    long; a failure of a learner or replay it talks to ends the run with one line."""
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


def _state(job: Conductor, procs: ApexProcesses) -> RunState:
    """The learner (learner 0: the group's replicas are identical), the counters and
    (checkpoint.save_replay) the replay with its rate limiter, or every shard."""
    save_replay = job.cfg.checkpoint.save_replay
    refs = [procs.leader.state_dict.remote()] + ([h.replay_state.remote() for h in procs.replays] if save_replay else [])
    states = ray.get(refs, timeout=job.stall_timeout_s)
    if not save_replay:
        return RunState(states[0], job.counters)
    if len(procs.replays) > 1:
        return RunState(states[0], job.counters, replay_shards=states[1:])
    return RunState(states[0], job.counters, replay=states[1])


def _finish(job: Conductor, calls: CallsInFlight, procs: ApexProcesses, ledger: InsertLedger) -> RunResult:
    """Stop the actors, then the final weights, evaluation, checkpoint and summary (with the
    replay's inserts beside the actors' acknowledged ones, and a group's replica hashes). The
    learners' queued calls are let finish (bounded), never cancelled: Ray's ordered queue of an
    actor with concurrency groups would wait 30 s for a cancelled call's sequence number."""
    timeout = job.cfg.apex.stall_timeout_s
    ray.wait(calls.of("learner"), num_returns=len(calls.of("learner")), timeout=timeout)
    procs.actors.shutdown()
    weights = ray.get(procs.leader.weights.remote(), timeout=timeout)
    inserted = procs.replay_stats(timeout).inserted_env_steps
    nodes = [p["node_id"] for name, p in job.identities.items() if name.startswith("actor") and p]
    final_state = _state(job, procs)
    ray.get(procs.leader.release_ranks.remote(), timeout=timeout)
    hashes = None
    if len(procs.learners) > 1:
        hashes = ray.get([h.weights_hash.remote() for h in procs.learners], timeout=timeout)
        ray.get([h.leave_group.remote() for h in procs.learners], timeout=timeout)
    summary = ApexSummary({n: nodes.count(n) for n in set(nodes)}, inserted, ledger.unacknowledged,
                          len(procs.learners), len(procs.replays) if procs.sharded else 1,
                          hashes, None if hashes is None else len(set(hashes)) == 1)
    return job.finish(fetch(weights.box), final_state, summary)
