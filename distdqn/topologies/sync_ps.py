"""sync_ps: synchronous parameter server (the synchronous data-parallel SGD of Dean et al. 2012 and
Chen et al. 2016, "Revisiting Distributed Synchronous SGD", applied to DQN).

                     +------ weights (online, target: object store) -------+
                     v                                                      |
    ReplicaWorker 0: env -> local replay -> gradient (or k local updates) -+|
    ReplicaWorker 1: env -> local replay -> gradient (or k local updates) -+--> ParameterServer
          ...                                                              |    (this process:
    ReplicaWorker N-1 -----------------------------------------------------+     Adam, target net)

Each round the server broadcasts its weights, waits for every worker (up to the round deadline),
and updates once:
    gradient form:  theta <- Adam(theta, mean_i grad_i)                 1 learner update per round
    model form:     theta <- theta + (1/N) sum_i (theta_i - theta)      k learner updates per round
A worker that misses the deadline is left out of the round (counted); its late answer is dropped
when it arrives, and it rejoins the next round. Workers that die are restarted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from distdqn.config import Config
from distdqn.core import aggregate
from distdqn.envs import EnvInfo
from distdqn.runtime.conductor import WorkerRun
from distdqn.runtime.session import RunResult


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    s = cfg.sync_ps
    job = WorkerRun(cfg, run_dir, info, owns_target=False)
    try:
        # ---- build: the server's learner here, the workers on the cluster ----
        server = job.start_server(resume)
        job.counters.setdefault("rounds", 0)
        job.counters.setdefault("left_out", 0)            # worker answers that missed their round
        job.counters.setdefault("rounds_short", 0)        # rounds that went on without every worker
        job.open(server.weights())
        pool = job.pool
        late: dict[Any, int] = {}                         # calls that missed their round -> worker

        def call(index: int, allow_collect: bool):
            worker, box = pool.handles[index], job.weights_for(index, server)
            if s.mode == "gradient":
                return worker.gradient.remote(box, allow_collect)
            return worker.local_steps.remote(box, s.local_steps, allow_collect)

        # ---- loop: broadcast -> every worker answers (or misses the deadline) -> one update ----
        with job.conducting():
            while True:
                budget_spent = job.env_steps >= cfg.train.total_env_steps
                busy = set(late.values())
                if len(busy) == pool.num_workers:   # every worker is still on an earlier round
                    job.check_stall()
                    job.collect_late(late, wait_s=1.0)
                    continue
                calls = {call(i, not budget_spent): i for i in range(pool.num_workers) if i not in busy}
                ready, missed = ray.wait(list(calls), num_returns=len(calls), timeout=s.round_timeout_s)
                while len(ready) < min(s.min_workers, len(calls)):   # too few answers: wait longer
                    job.check_stall()
                    more, missed = ray.wait(missed, num_returns=1, timeout=1.0)
                    ready += more
                for ref in missed:
                    late[ref] = calls[ref]
                job.counters["left_out"] += len(missed)
                job.counters["rounds_short"] += bool(missed)

                answers = []
                for ref in ready:
                    out = pool.result(ref)
                    if out is None:
                        job.worker_died(calls[ref])
                        continue
                    job.absorb(out)
                    answers.append(out)
                job.collect_late(late)

                # the server's update from this round's answers
                if s.mode == "gradient":
                    grads = [a["grads"] for a in answers if a["grads"] is not None]
                    if grads:
                        server.apply_gradient(aggregate.mean_of(grads))
                    for a in answers:
                        if a["grads"] is not None:
                            job.add_update_metrics(a["metrics"], 1)
                else:
                    models = [a["weights"] for a in answers if a["updates"] > 0]
                    if models:
                        server.move_toward(models, 1.0, max(a["updates"] for a in answers))
                    for a in answers:
                        job.add_update_metrics(a["sums"], a["updates"])
                made_update = bool(grads if s.mode == "gradient" else models)
                if budget_spent and not made_update:
                    break   # every worker has used the batches its last collection owed
                job.counters["rounds"] += 1
                job.learner_updates = server.version
                if job.housekeeping(server.weights, server.learner.state_dict,
                                    rounds=job.counters["rounds"], left_out=job.counters["left_out"],
                                    workers_per_round=len(answers)):
                    break

        # ---- tear down ----
        return job.finish(server.weights(), server.learner.state_dict(), late, mode=s.mode)
    finally:
        job.close()
