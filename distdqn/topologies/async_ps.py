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

from pathlib import Path
from typing import Any

import numpy as np
import ray

from distdqn.config import Config
from distdqn.envs import EnvInfo
from distdqn.runtime.conductor import WorkerRun
from distdqn.runtime.session import RunResult


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    a = cfg.async_ps
    job = WorkerRun(cfg, run_dir, info, owns_target=False)
    try:
        # ---- build: the server's learner here, the workers on the cluster ----
        server = job.start_server(resume)
        job.counters.setdefault("dropped_stale", 0)
        # staleness counts: index s for s = 0 .. max_staleness, the last bin for anything staler
        staleness = np.asarray(job.counters.pop("staleness_counts", np.zeros(a.max_staleness + 2)), dtype=np.int64)
        window = np.zeros_like(staleness)   # since the last metrics row
        job.open(server.weights())
        pool = job.pool
        since_pull = np.zeros(pool.num_workers, dtype=np.int64)

        def call(index: int):
            """The worker's next call, with fresh weights when it is due for them."""
            worker = pool.handles[index]
            if a.mode == "gradient":
                box = None
                if since_pull[index] == 0:
                    box = job.weights_for(index, server)
                since_pull[index] = (since_pull[index] + 1) % a.pull_period
                return worker.gradient.remote(box)
            return worker.local_steps.remote(job.weights_for(index, server), a.local_steps)

        # ---- loop: take whichever update arrives first, apply it, send that worker back ----
        in_flight = {call(i): i for i in range(pool.num_workers)}
        with job.conducting():
            while job.env_steps < cfg.train.total_env_steps:
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                if not ready:
                    job.check_stall()
                    continue
                index = in_flight.pop(ready[0])
                out = pool.result(ready[0])
                if out is None:   # the worker died: a new one takes its place, with fresh weights
                    job.worker_died(index)
                    since_pull[index] = 0
                else:
                    job.absorb(out)
                    stale = server.version - out["version"]
                    staleness[min(stale, a.max_staleness + 1)] += 1
                    window[min(stale, a.max_staleness + 1)] += 1
                    if stale > a.max_staleness:
                        job.counters["dropped_stale"] += 1
                    elif a.mode == "gradient" and out["grads"] is not None:
                        server.apply_gradient(out["grads"])
                        job.add_update_metrics(out["metrics"], 1)
                    elif a.mode == "parameter" and out["updates"]:
                        server.move_toward([out["weights"]], a.mixing_rate, out["updates"])
                        job.add_update_metrics(out["sums"], out["updates"])
                in_flight[call(index)] = index
                job.learner_updates = server.version
                if job.session.due_for_log(job.env_steps):
                    extra = {"dropped_stale": job.counters["dropped_stale"], **_staleness_stats(window)}
                    job.session.writer.histogram("staleness", window, job.env_steps)
                    window[:] = 0
                else:
                    extra = {}
                if job.housekeeping(server.weights, server.learner.state_dict, **extra):
                    break

        # ---- tear down ----
        job.counters["staleness_counts"] = staleness.tolist()
        return job.finish(server.weights(), server.learner.state_dict(), in_flight, mode=a.mode,
                          staleness_histogram={_bin_name(i, a.max_staleness): int(c)
                                               for i, c in enumerate(staleness) if c},
                          **_staleness_stats(staleness))
    finally:
        job.close()


def _bin_name(i: int, bound: int) -> str:
    return str(i) if i <= bound else f">{bound}"


def _staleness_stats(counts: np.ndarray) -> dict[str, float]:
    """Mean, 90th percentile and max of staleness from bin counts (the overflow bin counts as bound + 1)."""
    total = int(counts.sum())
    if total == 0:
        return {}
    values = np.arange(len(counts))
    cumulative = np.cumsum(counts)
    return {"staleness_mean": float((values * counts).sum() / total),
            "staleness_p90": float(values[np.searchsorted(cumulative, 0.9 * total)]),
            "staleness_max": float(values[counts > 0].max())}
