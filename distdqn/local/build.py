"""Core components built from the config: the one place that maps config fields to constructors."""

from __future__ import annotations

import torch

from distdqn.config import Config, config_from_dict
from distdqn.core.actor import Actor
from distdqn.core.learner import DQNLearner
from distdqn.core.networks import auto_kind, build_q_network
from distdqn.core.policy import make_policy
from distdqn.core.ratio import ReplayRatio
from distdqn.core.replay import ReplayBuffer, make_replay
from distdqn.core.schedules import LinearSchedule, make_schedule
from distdqn.envs import EnvInfo, make_vector_env


def resolve_network(cfg: Config, info: EnvInfo) -> Config:
    """``cfg`` with ``network.kind: auto`` replaced by the kind this env's observations fit
    (``auto_kind``): a new config, validated again (the checks that need the widths run then);
    ``cfg`` itself when its kind is given. A run resolves once, before its config.yaml is written
    (api.py), so that config.yaml and every process see the kind and widths it built."""
    if cfg.network.kind != "auto":
        return cfg
    raw = cfg.model_dump()   # Python mode: an env factory stays the callable it is
    raw["network"]["kind"] = auto_kind(info.obs_shape, info.obs_dtype)
    return config_from_dict(raw)


def build_network(cfg: Config, info: EnvInfo) -> torch.nn.Module:
    n = resolve_network(cfg, info).network
    return build_q_network(n.kind, info.obs_shape, info.num_actions, n.layers, n.dueling,
                           n.atoms, n.v_min, n.v_max, info.encoding)


def planned_updates(cfg: Config) -> int:
    """The run's planned learner updates (a decaying learning rate reaches ``lr_end`` there)."""
    return int(cfg.train.total_env_steps * cfg.train.replay_ratio)


def build_learner(cfg: Config, info: EnvInfo, owns_target: bool = True) -> DQNLearner:
    return DQNLearner(build_network(cfg, info), cfg.learner, planned_updates(cfg), owns_target)


def build_policy(cfg: Config, info: EnvInfo, weights):
    n = resolve_network(cfg, info).network
    return make_policy(n.kind, info.obs_shape, info.num_actions, n.layers, n.dueling, weights,
                       n.atoms, n.v_min, n.v_max, info.encoding)


def build_replay(cfg: Config, info: EnvInfo, seed: int) -> ReplayBuffer:
    r = cfg.replay
    return make_replay(r.prioritized, r.capacity, info.obs_shape, info.obs_dtype, seed, r.alpha,
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
