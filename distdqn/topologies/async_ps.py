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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distdqn.config import Config
from distdqn.core.staleness import StalenessHistogram, staleness_stats
from distdqn.envs import EnvInfo
from distdqn.local.session import RunResult
from distdqn.runtime.conductor import CallsInFlight, worker_conductor
from distdqn.runtime.messages import RunCounters, RunState
from distdqn.runtime.roles.replica_worker import ReplicaWorker


@dataclass
class AsyncCounters(RunCounters):
    dropped_stale: int = 0
    staleness_counts: list[int] = field(default_factory=list)   # the run's staleness histogram


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    a = cfg.async_ps
    job = worker_conductor(cfg, run_dir, info, AsyncCounters())
    try:
        # ---- build: the server's learner here, the workers on the cluster (restored when resuming) ----
        server, pool = job.start_server(resume, ReplicaWorker, False)   # the server keeps the target network
        staleness = StalenessHistogram(a.max_staleness, job.counters.staleness_counts or None)
        since_pull = np.zeros(pool.count, dtype=np.int64)   # gradients since each worker's last pull

        def call(index: int):
            """The worker's next call, with fresh weights when it is due for them."""
            if a.mode == "parameter":
                return pool.handles[index].local_steps.remote(server.weights_for(index), a.local_steps)
            weights = server.weights_for(index) if since_pull[index] == 0 else None
            since_pull[index] = (since_pull[index] + 1) % a.pull_period
            return pool.handles[index].gradient.remote(weights)

        def state() -> RunState:
            job.counters.staleness_counts = staleness.counts.tolist()
            return RunState(server.learner.state_dict(), job.counters, job.replicas())

        def log_extra() -> dict[str, Any]:
            window = staleness.take_window()
            job.session.writer.histogram("staleness", window, job.counters.env_steps)
            return {"dropped_stale": job.counters.dropped_stale, **staleness_stats(window)}

        # ---- loop: take whichever update arrives first, apply it, send that worker back ----
        calls = CallsInFlight()
        for i in range(pool.count):
            calls.add(call(i), "worker", i)
        with job.conducting():
            while job.counters.env_steps < cfg.train.total_env_steps:
                ref, _, index, _ = job.next_call(calls)
                report = pool.result(ref)
                if report is None:   # the worker died: a new one takes its place, with fresh weights
                    job.replace(index)
                    since_pull[index] = 0
                else:
                    job.absorb(report.experience)
                    if not staleness.add(server.version - report.version):
                        job.counters.dropped_stale += 1
                    elif a.mode == "gradient" and report.grads is not None:
                        server.apply_gradient(report.grads)
                        job.add_updates(report.updates)
                    elif a.mode == "parameter" and report.weights is not None:
                        server.move_toward([report.weights], a.mixing_rate, report.updates.count)
                        job.add_updates(report.updates)
                calls.add(call(index), "worker", index)
                job.counters.learner_updates = server.version
                if job.housekeeping(server.weights, state, log_extra):
                    break

        # ---- tear down ----
        return job.finish(server.weights(), state(), calls.calls, mode=a.mode,
                          staleness_histogram=staleness.bins(), **staleness_stats(staleness.counts))
    finally:
        job.close()
