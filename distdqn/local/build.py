"""Core components built from the config: the one place that maps config fields to constructors."""

from __future__ import annotations

import torch

from distdqn.config import Config
from distdqn.core.actor import Actor
from distdqn.core.learner import DQNLearner
from distdqn.core.networks import build_q_network
from distdqn.core.policy import make_policy
from distdqn.core.ratio import ReplayRatio
from distdqn.core.replay import ReplayBuffer, make_replay
from distdqn.core.schedules import LinearSchedule, make_schedule
from distdqn.envs import EnvInfo, make_vector_env


def build_network(cfg: Config, info: EnvInfo) -> torch.nn.Module:
    n = cfg.network
    return build_q_network(n.kind, info.obs_shape, info.num_actions, n.layers, n.dueling,
                           n.atoms, n.v_min, n.v_max)


def planned_updates(cfg: Config) -> int:
    """The run's planned learner updates (a decaying learning rate reaches ``lr_end`` there)."""
    return int(cfg.train.total_env_steps * cfg.train.replay_ratio)


def build_learner(cfg: Config, info: EnvInfo, owns_target: bool = True) -> DQNLearner:
    return DQNLearner(build_network(cfg, info), cfg.learner, planned_updates(cfg), owns_target)


def build_policy(cfg: Config, info: EnvInfo, weights):
    n = cfg.network
    return make_policy(n.kind, info.obs_shape, info.num_actions, n.layers, n.dueling, weights,
                       n.atoms, n.v_min, n.v_max)


def build_replay(cfg: Config, info: EnvInfo, seed: int, capacity: int | None = None) -> ReplayBuffer:
    """The config's replay (``capacity``: a shard's share of replay.capacity instead)."""
    r = cfg.replay
    return make_replay(r.prioritized, capacity or r.capacity, info.obs_shape, info.obs_dtype, seed, r.alpha,
                       r.priority_eps, r.storage)


def build_actor(cfg: Config, info: EnvInfo, weights, seed: int, num_envs: int | None = None) -> Actor:
    env = make_vector_env(cfg.env, num_envs or cfg.env.num_envs)
    return Actor(env, build_policy(cfg, info, weights), cfg.replay.n_step, cfg.learner.gamma, seed)


def build_epsilon_schedule(cfg: Config):
    e = cfg.exploration
    return make_schedule(e.schedule, e.eps_start, e.eps_end, e.decay_env_steps)


def build_beta_schedule(cfg: Config) -> LinearSchedule:
    r = cfg.replay
    return LinearSchedule(r.beta_start, r.beta_end, r.beta_anneal_env_steps or cfg.train.total_env_steps)


def build_replay_ratio(cfg: Config) -> ReplayRatio:
    return ReplayRatio(cfg.train.replay_ratio, cfg.learning_starts_env_steps)
