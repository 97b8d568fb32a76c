"""async_ps: asynchronous parameter server (Gorila: Nair et al. 2015, "Massively Parallel Methods
for Deep Reinforcement Learning"; A3C-style lock-free updates: Mnih et al. 2016).

    PSWorker 0 ------ gradient (or its model), made at version v ---+
    PSWorker 1 ------                                               +--> ParameterServer (this process)
          ...                                                         |    applies each as it arrives,
    PSWorker N-1 ----                                               |    unless staler than the bound
          ^                                                           |
          +------ fresh weights every pull_period of its updates -----+

Workers never wait for each other: the server takes whichever answer comes first and sends that
worker straight back to work.
    gradient form:   theta <- Adam(theta, grad_i)                       1 learner update per gradient
    parameter form:  theta <- theta + eta * (theta_i - theta)           k learner updates per model
Staleness (server version minus the version the worker's update was computed from) is recorded
for every arriving update; updates staler than ``async_ps.max_staleness`` are dropped.

The weights and pushes travel on the update channel (runtime/updates/: shared memory on the
server's host, Ray calls elsewhere), chosen when the server starts; this loop is the same on any.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distdqn.config import Config
from distdqn.core.staleness import StalenessHistogram, staleness_stats
from distdqn.envs import EnvInfo
from distdqn.local.session import RunResult
from distdqn.runtime import parameter_server
from distdqn.runtime.conductor import worker_conductor
from distdqn.runtime.messages import RunCounters, RunState


@dataclass
class AsyncCounters(RunCounters):
    dropped_stale: int = 0
    staleness_counts: list[int] = field(default_factory=list)   # the run's staleness histogram


@dataclass(frozen=True)
class AsyncSummary:
    mode: str
    transport: str
    staleness_histogram: dict[str, int]   # updates by staleness, the run's whole


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    a = cfg.async_ps
    job = worker_conductor(cfg, run_dir, info, AsyncCounters())
    try:
        # ---- build: the server's learner here, its workers on the cluster (restored when resuming) ----
        server = parameter_server.start(job, resume)
        c = job.counters
        staleness = StalenessHistogram(a.max_staleness, c.staleness_counts or None)

        def state() -> RunState:
            c.staleness_counts = staleness.counts.tolist()
            return RunState(server.learner.state_dict(), c, job.replicas())

        def log_extra() -> dict[str, Any]:
            window = staleness.take_window()
            job.session.writer.histogram("staleness", window, c.env_steps)
            return {"dropped_stale": c.dropped_stale, **asdict(staleness_stats(window)), **asdict(server.times)}

        # ---- loop: the next push -> apply it (unless too stale) -> publish; its worker goes straight on ----
        with job.conducting():
            while c.env_steps < cfg.train.total_env_steps:
                push = server.next_push()
                if push.vector is not None and push.num_updates:
                    if not staleness.add(server.version - push.based_on):
                        c.dropped_stale += 1
                    elif a.mode == "gradient":
                        server.apply_gradient(push.vector)                         # theta <- Adam(grad_i)
                    else:
                        server.move_toward(push.vector, a.mixing_rate, push.num_updates)   # theta += eta (theta_i - theta)
                server.publish()
                c.learner_updates = server.version
                if job.housekeeping(server.weights, state, log_extra):
                    break

        # ---- tear down ----
        server.close(drain=True)
        return job.finish(server.weights(), state(), AsyncSummary(a.mode, server.transport, staleness.bins()),
                          staleness_stats(staleness.counts))
    finally:
        job.close()
