"""sync_ps: synchronous parameter server (the synchronous data-parallel SGD of Dean et al. 2012 and
Chen et al. 2016, "Revisiting Distributed Synchronous SGD", applied to DQN).

                     +------ Weights (online, target: object store) -------+
                     v                                                      |
    PSWorker 0:      env -> local replay -> gradient (or k local updates) -+|
    PSWorker 1:      env -> local replay -> gradient (or k local updates) -+--> ParameterServer
          ...                                                              |    (this process:
    PSWorker N-1 ----------------------------------------------------------+     Adam, target net)

Each round the server pushes its weights, waits for every worker (up to the round deadline),
and updates once:
    gradient form:  theta <- Adam(theta, mean_i grad_i)                 1 learner update per round
    model form:     theta <- theta + (1/N) sum_i (theta_i - theta)      k learner updates per round
A worker that misses the deadline is left out of the round (counted); its late answer is dropped
when it arrives, and it rejoins the next round. Workers that die are restarted.

The weights and pushes travel on the update channel (runtime/updates/: shared memory on the
server's host, Ray calls elsewhere), chosen when the server starts; this loop is the same on any.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distdqn.config import Config
from distdqn.envs import EnvInfo
from distdqn.local.session import RunResult
from distdqn.runtime import parameter_server
from distdqn.runtime.conductor import worker_conductor
from distdqn.runtime.messages import RunCounters, RunState


@dataclass
class SyncCounters(RunCounters):
    rounds: int = 0
    left_out: int = 0          # worker answers that missed their round
    rounds_short: int = 0      # rounds that went on without every worker


@dataclass(frozen=True)
class SyncSummary:
    mode: str
    transport: str


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    s, c = cfg.sync_ps, SyncCounters()
    job = worker_conductor(cfg, run_dir, info, c)
    try:
        # ---- build: the server's learner here, its workers on the cluster (restored when resuming) ----
        server = parameter_server.start(job, resume)
        c = job.counters

        def state() -> RunState:
            return RunState(server.learner.state_dict(), c, job.replicas())

        # ---- loop: gather a round -> apply the mean -> publish the next round ----
        with job.conducting():
            while True:
                budget_spent = c.env_steps >= cfg.train.total_env_steps
                server.allow_collect(not budget_spent)
                round_ = server.gather(s.round_timeout_s, s.min_workers)   # this publication's pushes
                c.left_out += round_.missed
                c.rounds_short += bool(round_.missed)
                if round_.with_updates and s.mode == "gradient":
                    server.apply_gradient(round_.mean())                     # theta <- Adam(mean_i grad_i)
                elif round_.with_updates:
                    server.move_toward(round_.mean(), 1.0, round_.most_updates)   # theta <- mean_i theta_i
                elif budget_spent:
                    break   # every worker has used the batches its last collection owed
                server.publish()                                             # the next round
                c.rounds += 1
                c.learner_updates = server.version
                if job.housekeeping(server.weights, state, lambda r=round_: {
                        "rounds": c.rounds, "left_out": c.left_out, "workers_per_round": len(r.pushes),
                        **asdict(server.times)}):
                    break

        # ---- tear down ----
        server.close(drain=True)
        return job.finish(server.weights(), state(), SyncSummary(s.mode, server.transport))
    finally:
        job.close()
