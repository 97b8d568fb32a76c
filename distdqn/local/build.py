"""Core components built from the config: the one place that maps config fields to constructors."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from distdqn.config import Config, config_from_dict
from distdqn.core.actor import Actor
from distdqn.core.learner import DQNLearner
from distdqn.core.networks import auto_kind, build_q_network
from distdqn.core.policy import make_policy
from distdqn.core.ratio import ReplayRatio
from distdqn.core.replay import ReplayBuffer, estimated_bytes, make_replay
from distdqn.core.schedules import LinearSchedule, make_schedule
from distdqn.envs import EnvInfo, make_vector_env
from distdqn.errors import ConfigError


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


def build_replay(cfg: Config, info: EnvInfo, seed: int, capacity: int | None = None) -> ReplayBuffer:
    """The config's replay (``capacity``: a shard's share of replay.capacity instead)."""
    r = cfg.replay
    return make_replay(r.prioritized, capacity or r.capacity, info.obs_shape, info.obs_dtype, seed, r.alpha,
                       r.priority_eps, r.storage)


def machine_memory_bytes() -> int:
    """This machine's memory, or the memory limit of the container it runs in if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def check_replay_memory(cfg: Config, info: EnvInfo, memory_bytes: int | None = None) -> None:
    """Refuse, in one line, a replay that would not fit in this machine's memory: one replay,
    or (a run on a Ray instance of its own, every process on this machine) all the run's replays:
    one per worker or federated client in the data-parallel topologies."""
    r = cfg.replay
    one = estimated_bytes(r.capacity, info.obs_shape, info.obs_dtype, r.storage, r.prioritized)
    per_worker = cfg.topology in ("sync_ps", "async_ps", "allreduce", "federated")
    here = cfg.workers.num_workers if per_worker and cfg.cluster.address is None else 1
    memory = memory_bytes or machine_memory_bytes()
    if one * here > memory:
        shape = "x".join(map(str, info.obs_shape))
        times = f" x {here} workers" if here > 1 else ""
        raise ConfigError(f"replay.capacity: {r.capacity} transitions of {shape} {info.obs_dtype} observations "
                          f"need about {one / 2**30:.1f} GiB{times}, more than this machine's "
                          f"{memory / 2**30:.1f} GiB of memory")


def build_actor(cfg: Config, info: EnvInfo, weights, seed: int, num_envs: int | None = None) -> Actor:
    env = make_vector_env(cfg.env, num_envs or cfg.env.num_envs)
    return Actor(env, build_policy(cfg, info, weights), cfg.replay.n_step, cfg.learner.gamma, seed,
                 cfg.env.non_finite, cfg.env.id)


def build_epsilon_schedule(cfg: Config):
    e = cfg.exploration
    return make_schedule(e.schedule, e.eps_start, e.eps_end, e.decay_env_steps)


def build_beta_schedule(cfg: Config) -> LinearSchedule:
    r = cfg.replay
    return LinearSchedule(r.beta_start, r.beta_end, r.beta_anneal_env_steps or cfg.train.total_env_steps)


def build_replay_ratio(cfg: Config) -> ReplayRatio:
    return ReplayRatio(cfg.train.replay_ratio, cfg.learning_starts_env_steps)
