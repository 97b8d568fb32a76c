"""sync_ps: synchronous parameter server (the synchronous data-parallel SGD of Dean et al. 2012 and
Chen et al. 2016, "Revisiting Distributed Synchronous SGD", applied to DQN).

                     +------ Weights (online, target: object store) -------+
                     v                                                      |
    ReplicaWorker 0: env -> local replay -> gradient (or k local updates) -+|
    ReplicaWorker 1: env -> local replay -> gradient (or k local updates) -+--> ParameterServer
          ...                                                              |    (this process:
    ReplicaWorker N-1 -----------------------------------------------------+     Adam, target net)

Each round the server pushes its weights, waits for every worker (up to the round deadline),
and updates once:
    gradient form:  theta <- Adam(theta, mean_i grad_i)                 1 learner update per round
    model form:     theta <- theta + (1/N) sum_i (theta_i - theta)      k learner updates per round
A worker that misses the deadline is left out of the round (counted); its late answer is dropped
when it arrives, and it rejoins the next round. Workers that die are restarted.

How the weights and updates travel (``sync_ps.transport``):
    shm  every worker on the driver's node: each runs its own loop (ReplicaWorker.serve) and meets
         the server in shared memory (runtime/server_channel.py): a round is one publication of
         the weights and one push per worker, no Ray call; the driver hears the workers'
         reports (episodes, metrics, busy and wait times) beside the rounds;
    ray  a Ray call per worker per round, the weights as its argument (workers on any node).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from distdqn.config import Config
from distdqn.envs import EnvInfo
from distdqn.local.session import RunResult
from distdqn.runtime.conductor import Conductor, worker_conductor
from distdqn.runtime.messages import RunCounters, RunState, Weights
from distdqn.runtime.roles.replica_worker import ReplicaWorker
from distdqn.runtime.server import ParameterServer, WorkerLoops


@dataclass
class SyncCounters(RunCounters):
    rounds: int = 0
    left_out: int = 0          # worker answers that missed their round
    rounds_short: int = 0      # rounds that went on without every worker


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    s = cfg.sync_ps
    job = worker_conductor(cfg, run_dir, info, SyncCounters())
    try:
        # ---- build: the server's learner here, the workers on the cluster (restored when resuming) ----
        server, pool, transport = job.start_replica_server(resume, ReplicaWorker)

        def state() -> RunState:
            return RunState(server.learner.state_dict(), job.counters, job.replicas())

        # ---- loop: rounds over shared memory (workers on this node) or Ray calls ----
        with job.conducting():
            late = _rounds_over_ray(job, server, pool, state) if transport == "ray" else _rounds_in_shared_memory(
                job, server, state)

        # ---- tear down ----
        return job.finish(server.weights(), state(), late, mode=s.mode, transport=transport)
    finally:
        job.close()


def _rounds_over_ray(job: Conductor, server: ParameterServer, pool: Any, state: Callable[[], RunState]) -> dict:
    """Each round a call per worker, with the weights; returns the calls still late at the end."""
    cfg, s = job.cfg, job.cfg.sync_ps
    late: dict[Any, int] = {}                        # calls that missed their round -> worker
    while True:
        budget_spent = job.counters.env_steps >= cfg.train.total_env_steps
        if len(late) == pool.count:   # every worker is still on an earlier round
            job.check_stall()
            job.collect_late(late, lambda r: job.absorb(r.experience), wait_s=1.0)
            continue
        calls = {_call(cfg, pool.handles[i], server.weights_for(i), not budget_spent): i
                 for i in range(pool.count) if i not in late.values()}
        ready, missed = ray.wait(list(calls), num_returns=len(calls), timeout=s.round_timeout_s)
        while len(ready) < min(s.min_workers, len(calls)):   # too few answers: wait longer
            job.check_stall()
            more, missed = ray.wait(missed, num_returns=1, timeout=1.0)
            ready += more
        late.update({ref: calls[ref] for ref in missed})
        job.counters.left_out += len(missed)
        job.counters.rounds_short += bool(missed)

        reports = []
        for ref in ready:
            report = pool.result(ref)
            if report is None:
                job.replace(calls[ref])
                continue
            job.absorb(report.experience)
            job.add_updates(report.updates)
            reports.append(report)
        job.collect_late(late, lambda r: job.absorb(r.experience))

        if not _update(server, s.mode, reports) and budget_spent:
            return late   # every worker has used the batches its last collection owed
        job.counters.rounds += 1
        job.counters.learner_updates = server.version
        job.progressed()
        if job.housekeeping(server.weights, state, {
                "rounds": job.counters.rounds, "left_out": job.counters.left_out, "workers_per_round": len(reports)}):
            return late


def _rounds_in_shared_memory(job: Conductor, server: ParameterServer, state: Callable[[], RunState]) -> dict:
    """Each round one publication of the weights, and a push from every worker (its own loop);
    the driver hears the workers' reports beside the rounds."""
    cfg, s = job.cfg, job.cfg.sync_ps
    with WorkerLoops(job, server, True, s.mode, s.local_steps, 1) as loops:
        while True:
            budget_spent = loops.env_steps >= cfg.train.total_env_steps
            loops.channel.allow_collect(not budget_spent)
            counts, missed = loops.gather_round(s.round_timeout_s, s.min_workers)
            job.counters.left_out += missed
            job.counters.rounds_short += bool(missed)
            taken = [k for k, count in enumerate(counts) if count]
            if taken:
                mean = loops.rows[taken].mean(axis=0)
                if s.mode == "gradient":
                    server.apply_gradient(mean)
                else:
                    server.move_toward(mean, 1.0, max(counts))
            elif budget_spent:
                break   # every worker has used the batches its last collection owed
            loops.publish()   # the next round
            job.counters.rounds += 1
            job.counters.learner_updates = server.version
            loops.poll()
            if job.housekeeping(server.weights, state, {
                    "rounds": job.counters.rounds, "left_out": job.counters.left_out,
                    "workers_per_round": len(counts), **loops.busy}, on_thread=True):
                break
    return {}


def _call(cfg: Config, worker: Any, weights: Weights, allow_collect: bool) -> Any:
    """A worker's call for this round: a gradient, or sync_ps.local_steps local updates."""
    if cfg.sync_ps.mode == "gradient":
        return worker.gradient.remote(weights, allow_collect)
    return worker.local_steps.remote(weights, cfg.sync_ps.local_steps, allow_collect)


def _update(server: Any, mode: str, reports: list) -> bool:
    """The server's update from this round's reports; False if no worker had a batch owed."""
    if mode == "gradient":
        grads = [r.grads for r in reports if r.grads is not None]
        if grads:
            server.apply_gradient(np.mean(grads, axis=0))
        return bool(grads)
    models = [r.weights for r in reports if r.weights is not None]
    if models:
        server.move_toward(np.mean(models, axis=0), 1.0, max(r.updates.count for r in reports))
    return bool(models)
