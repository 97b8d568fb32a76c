"""async_ps: asynchronous parameter server (Gorila: Nair et al. 2015, "Massively Parallel Methods
for Deep Reinforcement Learning"; A3C-style lock-free updates: Mnih et al. 2016).

    ReplicaWorker 0 --- gradient (or its model), made at version v ---+
    ReplicaWorker 1 ---                                               +--> ParameterServer (this process)
          ...                                                         |    applies each as it arrives,
    ReplicaWorker N-1 -                                               |    unless staler than the bound
          ^                                                           |
          +------ fresh weights every pull_period of its updates -----+

Workers never wait for each other: the server takes whichever answer comes first and sends that
worker straight back to work.
    gradient form:   theta <- Adam(theta, grad_i)                       1 learner update per gradient
    parameter form:  theta <- theta + eta * (theta_i - theta)           k learner updates per model
Staleness (server version minus the version the worker's update was computed from) is recorded
for every arriving update; updates staler than ``async_ps.max_staleness`` are dropped.

``async_ps.transport`` as in sync_ps: ``shm`` (workers on the driver's node run their own loops and
push into their slots in shared memory; the server publishes after every update it applies) or
``ray`` (a Ray call per update).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distdqn.config import Config
from distdqn.core.staleness import StalenessHistogram, staleness_stats
from distdqn.envs import EnvInfo
from distdqn.local.session import RunResult
from distdqn.runtime.conductor import CallsInFlight, Conductor, worker_conductor
from distdqn.runtime.messages import RunCounters, RunState
from distdqn.runtime.roles.replica_worker import ReplicaWorker
from distdqn.runtime.server import ParameterServer, WorkerLoops


@dataclass
class AsyncCounters(RunCounters):
    dropped_stale: int = 0
    staleness_counts: list[int] = field(default_factory=list)   # the run's staleness histogram


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    a = cfg.async_ps
    job = worker_conductor(cfg, run_dir, info, AsyncCounters())
    try:
        # ---- build: the server's learner here, the workers on the cluster (restored when resuming) ----
        server, pool, transport = job.start_replica_server(resume, ReplicaWorker)
        staleness = StalenessHistogram(a.max_staleness, job.counters.staleness_counts or None)

        def state() -> RunState:
            job.counters.staleness_counts = staleness.counts.tolist()
            return RunState(server.learner.state_dict(), job.counters, job.replicas())

        def apply(based_on: int, count: int, update: Any) -> bool:
            """Apply one worker's update made at version ``based_on`` (unless too stale)."""
            if not staleness.add(server.version - based_on):
                job.counters.dropped_stale += 1
                return False
            if a.mode == "gradient":
                server.apply_gradient(update)
            else:
                server.move_toward(update, a.mixing_rate, count)
            return True

        def log_extra() -> dict[str, Any]:
            window = staleness.take_window()
            job.session.writer.histogram("staleness", window, job.counters.env_steps)
            return {"dropped_stale": job.counters.dropped_stale, **staleness_stats(window)}

        # ---- loop: take whichever update arrives first, apply it; the worker goes straight on ----
        with job.conducting():
            pending = (_updates_over_ray(job, server, pool, apply, state, log_extra) if transport == "ray"
                       else _updates_in_shared_memory(job, server, apply, state, log_extra))

        # ---- tear down ----
        return job.finish(server.weights(), state(), pending, mode=a.mode, transport=transport,
                          staleness_histogram=staleness.bins(), **staleness_stats(staleness.counts))
    finally:
        job.close()


def _updates_in_shared_memory(job: Conductor, server: ParameterServer, apply: Callable[..., bool],
                              state: Callable[[], RunState], log_extra: Callable[[], dict]) -> dict:
    """Each worker runs its own loop and pushes into its slot; the server applies each push as it
    comes and publishes the new weights at once."""
    a = job.cfg.async_ps
    with WorkerLoops(job, server, False, a.mode, a.local_steps, a.pull_period if a.mode == "gradient" else 1) as loops:
        while loops.env_steps < job.cfg.train.total_env_steps:
            based_on, count = loops.next_push()
            if count and apply(based_on, count, loops.rows[0]):
                loops.publish()
            job.counters.learner_updates = server.version
            loops.poll()
            if job.housekeeping(server.weights, state, lambda: {**log_extra(), **loops.busy}, on_thread=True):
                break
    return {}


def _updates_over_ray(job: Conductor, server: ParameterServer, pool: Any, apply: Callable[..., bool],
                      state: Callable[[], RunState], log_extra: Callable[[], dict]) -> dict:
    """A call per update, the weights pushed with it when the worker is due for them; returns the
    calls still in flight at the end."""
    a = job.cfg.async_ps
    since_pull = np.zeros(pool.count, dtype=np.int64)   # gradients since each worker's last pull

    def call(index: int):
        """The worker's next call, with fresh weights when it is due for them."""
        if a.mode == "parameter":
            return pool.handles[index].local_steps.remote(server.weights_for(index), a.local_steps)
        weights = server.weights_for(index) if since_pull[index] == 0 else None
        since_pull[index] = (since_pull[index] + 1) % a.pull_period
        return pool.handles[index].gradient.remote(weights)

    calls = CallsInFlight()
    for i in range(pool.count):
        calls.add(call(i), "worker", i)
    while job.counters.env_steps < job.cfg.train.total_env_steps:
        ref, _, index, _ = job.next_call(calls)
        report = pool.result(ref)
        if report is None:   # the worker died: a new one takes its place, with fresh weights
            job.replace(index)
            since_pull[index] = 0
        else:
            job.absorb(report.experience)
            update = report.grads if a.mode == "gradient" else report.weights
            if update is not None and apply(report.version, report.updates.count, update):
                job.add_updates(report.updates)
        calls.add(call(index), "worker", index)
        job.counters.learner_updates = server.version
        if job.housekeeping(server.weights, state, log_extra):
            break
    return calls.calls
