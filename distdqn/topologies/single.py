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

The pieces are one ``Replica`` (local/replica.py), the same that every data-parallel worker owns.
No Ray. With ``learner.model_parallel`` = P > 1 the learner is split over this process and P - 1
local processes (local/model_parallel.py); the loop does not change.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from distdqn.checkpoint import restoring
from distdqn.config import Config
from distdqn.core.records import Episodes, UpdateStats
from distdqn.envs import EnvInfo
from distdqn.local import model_parallel
from distdqn.local.replica import Replica
from distdqn.local.session import (
    RunResult,
    RunSession,
    seed_everything,
    set_rng_state,
    torch_threads,
)
from distdqn.runtime.messages import RunCounters, RunState


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    # ---- seed, threads, session ----
    seed_everything(cfg.seed)
    torch.set_num_threads(torch_threads(cfg))
    session = RunSession(cfg, run_dir, info)

    # ---- build: one Replica (vector env + Actor, replay, learner, schedules); with
    #      learner.model_parallel = P > 1 its learner becomes rank 0 of P, the others local processes ----
    replica = Replica(cfg, info, index=0, num_replicas=1, seed=cfg.seed)
    if cfg.learner.model_parallel > 1:
        replica.learner = model_parallel.split_locally(replica.learner, cfg, info, torch_threads(cfg))

    # ---- resume: restore every component from the checkpoint ----
    if resume is not None:
        state = RunState.from_components(resume, RunCounters)
        with restoring():   # a part that does not fit (a shape, a missing key) is one line
            episodes_go_on = replica.load_state_dict({**state.replicas[0], "learner": state.learner})
            session.resume(resume["session"])
            set_rng_state(resume["rng"])
        replica.actor.non_finite_skipped = state.counters.non_finite_steps
        replica.learner.non_finite.total = state.counters.non_finite_updates
        if not episodes_go_on:
            session.note(f"resumed with fresh episodes: {cfg.env.id}'s state is not saved as data")

    def checkpoint() -> RunState:
        replica_state = replica.state_dict(cfg.checkpoint.save_replay, with_env=True)
        counters = RunCounters(replica.env_steps, replica.learner.updates,
                               non_finite_steps=replica.actor.non_finite_skipped,
                               non_finite_updates=replica.learner.non_finite.total)
        return RunState(replica_state.pop("learner"), counters, replicas=[replica_state])

    # ---- loop: collect -> store -> sample -> update -> weights sync ----
    session.open(replica.env_steps, replica.learner.updates)
    interrupted = False
    learner_busy_s = 0.0   # time in sampling and updates (benchmarks/apex_scaling.py reads its share)
    try:
        while replica.env_steps < cfg.train.total_env_steps:
            rollout = replica.collect()                   # act: steps_per_collect vector steps, epsilon-greedy
            replica.store(rollout)                        # its n-step transitions into the replay
            session.stats.add_episodes(Episodes.of(rollout.episode_returns, rollout.episode_lengths))
            started, updates = time.perf_counter(), UpdateStats()
            for batch in replica.sample_owed():           # the batches the replay ratio owes now
                result = replica.learner.step(batch)      # TD loss, optimizer, target network by period
                replica.replay.update_priorities(batch.indices, result.priorities)
                updates.add(result.metrics)
            replica.sync_policy()                         # act with the newest weights
            learner_busy_s += time.perf_counter() - started
            session.stats.add_updates(updates)

            if session.evaluate_if_due(replica.env_steps, replica.learner.get_weights):
                break
            session.log_if_due(replica.env_steps, replica.learner.updates,
                               epsilon=replica.epsilon(replica.env_steps), replay_size=len(replica.replay),
                               learner_busy_s=learner_busy_s)
            session.checkpoint_if_due(replica.env_steps, lambda: checkpoint().components())
    except KeyboardInterrupt:
        interrupted = True

    # ---- tear down: final evaluation, checkpoint, summary ----
    state = checkpoint()
    result = session.finish(replica.learner.get_weights(), replica.env_steps, replica.learner.updates,
                            state.components(), interrupted, (state.counters,))
    replica.close()
    if cfg.learner.model_parallel > 1:
        replica.learner.close()   # the learner's other ranks end
    return result
