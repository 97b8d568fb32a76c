"""single: one process, many environments stepped as one vector. The baseline (Mnih et al. 2015).

    +------------------------------- one process ---------------------------------+
    |                                                                              |
    |   VectorEnv (num_envs) --obs--> Actor --n-step transitions--> Replay         |
    |        ^                          |                             |            |
    |        +--------actions-----------+                       batch |            |
    |                                   ^                             v            |
    |                                   +-------weights-------- DQNLearner         |
    |                                                       (priorities -> Replay) |
    +------------------------------------------------------------------------------+

Each iteration collects ``train.steps_per_collect`` vector steps, stores them, then runs as many
learner updates as the replay ratio owes; the actor acts with the newest weights. The pieces are
one ``Replica`` (runtime/replica.py), the same that every data-parallel worker owns.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from distdqn.config import Config
from distdqn.envs import EnvInfo
from distdqn.errors import CheckpointError
from distdqn.runtime.replica import Replica
from distdqn.runtime.session import (
    RunResult,
    RunSession,
    default_torch_threads,
    seed_everything,
    set_rng_state,
)


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    # ---- seed, threads, session ----
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.train.torch_threads or default_torch_threads())
    session = RunSession(cfg, run_dir, info)

    # ---- build: one Replica (vector env + Actor, replay, learner, schedules) ----
    replica = Replica(cfg, info, index=0, num_replicas=1, seed=cfg.seed)

    # ---- resume: restore every component from the checkpoint ----
    if resume is not None:
        if "replica" not in resume:
            raise CheckpointError("the checkpoint was written by an older distdqn (no replica component); "
                                  "start a new run")
        replica.load_state_dict({**resume["replica"], "learner": resume["learner"]})
        session.load_state_dict(resume["session"])
        set_rng_state(resume["rng"])

    def components() -> dict[str, Any]:
        state = replica.state_dict(cfg.checkpoint.save_replay, with_env=True)
        return {"learner": state.pop("learner"), "replica": state, "counters": {"env_steps": replica.env_steps}}

    # ---- loop: collect -> store -> learn the batches owed ----
    session.open(replica.env_steps, replica.learner.updates)
    session.restore_stats()
    interrupted = False
    learner_busy_s = 0.0   # time in sampling and updates (benchmarks/apex_scaling.py reads its share)
    try:
        while replica.env_steps < cfg.train.total_env_steps:
            replica.collect()
            started = time.perf_counter()
            updates, sums = replica.train(replica.pending, allow_collect=False)
            learner_busy_s += time.perf_counter() - started
            seen = replica.drain()
            session.stats.add_episodes(seen["episode_returns"], seen["episode_lengths"])
            session.stats.add_updates(sums, updates)

            if session.evaluate_if_due(replica.policy, replica.env_steps):
                break
            session.log_if_due(replica.env_steps, replica.learner.updates,
                               epsilon=replica.epsilon(replica.env_steps), replay_size=len(replica.replay),
                               learner_busy_s=learner_busy_s)
            session.checkpoint_if_due(replica.env_steps, components)
    except KeyboardInterrupt:
        interrupted = True

    # ---- tear down: final evaluation, checkpoint, summary ----
    result = session.finish(replica.policy, replica.env_steps, replica.learner.updates, components(), interrupted)
    replica.close()
    return result
