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
learner updates as the replay ratio owes, and refreshes the actor's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distdqn.config import Config
from distdqn.envs import EnvInfo
from distdqn.runtime import components as build
from distdqn.runtime.session import (
    RunResult,
    RunSession,
    default_torch_threads,
    restore_env,
    seed_everything,
    set_rng_state,
    snapshot_env,
)


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    # ---- seed, threads, session ----
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.train.torch_threads or default_torch_threads())
    session = RunSession(cfg, run_dir, info)

    # ---- build: learner, actor (with its vector env), replay, schedules ----
    learner = build.build_learner(cfg, info)
    actor = build.build_actor(cfg, info, learner.get_weights(), seed=cfg.seed)
    replay = build.build_replay(cfg, info, seed=cfg.seed + 1)
    epsilon = build.build_epsilon_schedule(cfg)
    beta = build.build_beta_schedule(cfg)
    env_steps = 0

    # ---- resume: restore every component from the checkpoint ----
    if resume is not None:
        learner.load_state_dict(resume["learner"])
        if "replay" in resume:
            replay.load_state_dict(resume["replay"])
        env_restored = resume["env"] is not None
        if env_restored:
            actor.env.close()
            actor.env = restore_env(resume["env"])
        actor.load_state_dict(resume["actor"], env_restored)
        actor.policy.set_weights(learner.get_weights())
        session.load_state_dict(resume["session"])
        env_steps = resume["counters"]["env_steps"]
        set_rng_state(resume["rng"])

    def components() -> dict[str, Any]:
        state = {"learner": learner.state_dict(), "actor": actor.state_dict(),
                 "env": snapshot_env(actor.env), "counters": {"env_steps": env_steps}}
        if cfg.checkpoint.save_replay:
            state["replay"] = replay.state_dict()
        return state

    # ---- loop: collect -> store -> learn ----
    session.open(env_steps, learner.updates)
    session.restore_stats()
    interrupted = False
    try:
        while env_steps < cfg.train.total_env_steps:
            rollout = actor.collect(cfg.train.steps_per_collect, epsilon(env_steps))
            replay.add(rollout.transitions)
            env_steps += rollout.env_steps
            session.stats.add_episodes(rollout.episode_returns, rollout.episode_lengths)

            num_updates = build.updates_due(cfg, env_steps, learner.updates)
            batches = replay.sample_batches(num_updates, cfg.learner.batch_size, beta(env_steps)) if num_updates else []
            for batch in batches:
                result = learner.step(batch)
                replay.update_priorities(batch.indices, result.priorities)
                session.stats.add_update(result.metrics)
            if num_updates:
                actor.policy.set_weights(learner.get_weights())

            if session.evaluate_if_due(actor.policy, env_steps):
                break
            session.log_if_due(env_steps, learner.updates, epsilon=epsilon(env_steps),
                               replay_size=len(replay))
            session.checkpoint_if_due(env_steps, components)
    except KeyboardInterrupt:
        interrupted = True

    # ---- tear down: final evaluation, checkpoint, summary ----
    result = session.finish(actor.policy, env_steps, learner.updates, components(), interrupted)
    actor.env.close()
    return result
