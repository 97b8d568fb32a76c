"""apex.replay_shards: the replay in K shards (ReplayServer processes, one per host with
``per_host``), and the learners' side of them.

    actor i --insert--> the shard on its own node          shard k: ReplayServer(shard=True)
    learner r --draw(fractions of shard k's mass, the learners' word)--> shard k --> ShardDraw
    learner r --update_priorities(positions)--> the shard each transition came from

``ShardedSampler`` is what a learner samples through whenever the replay is sharded or shared by
a group of learners: each group of ``apex.batches_per_sample`` batches is split across shards by
their priority mass and put back together in draw order (core/shards.py: the combined batch has
the distribution of one replay holding the same transitions and priorities), the next group is
drawn while this one trains, and the leader judges the replay ratio over every shard
(core/ratelimit.py) while the other learners follow its word (``agree``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distdqn.config import Config
from distdqn.core import shards
from distdqn.core.ratelimit import RateLimiter
from distdqn.core.transitions import Batch
from distdqn.envs import EnvInfo
from distdqn.runtime.messages import NO_SHARD, ShardDraw, ShardStatus
from distdqn.runtime.roles.replay_server import SAMPLE_WAIT_S, ReplayServer

DRAW_TIMEOUT_S = SAMPLE_WAIT_S + 30   # a shard's answer to a draw or a sync, at most


def shard_capacity(cfg: Config, num_shards: int) -> int:
    """Each shard's share of ``replay.capacity`` (the whole replay's)."""
    return -(-cfg.replay.capacity // num_shards)


def shard_nodes(cfg: Config, nodes: list[str]) -> list[str | None]:
    """Where each shard goes: one on every node (``per_host``), else anywhere (None: spread)."""
    if cfg.apex.replay_shards == "per_host":
        return list(nodes)
    return [None] * cfg.apex.replay_shards


def start_shards(cfg: Config, info: EnvInfo, placement: list[str | None]) -> list[Any]:
    """The shards, each a ReplayServer with ``apex.replay_cpus``, on its node (or spread)."""
    handles = []
    for k, node in enumerate(placement):
        strategy = NodeAffinitySchedulingStrategy(node, soft=False) if node else "SPREAD"
        handles.append(ReplayServer.options(num_cpus=cfg.apex.replay_cpus, scheduling_strategy=strategy).remote(
            cfg, info, cfg.seed + 1 + 1000 * k, shard_capacity(cfg, len(placement))))
    return handles


def shard_for(index: int, node: str, nodes_of_shards: list[str]) -> int:
    """The shard actor ``index`` inserts into: one on its own node (the index-th of those, in
    turn), or where its node has none, shard ``index`` mod K."""
    here = [k for k, n in enumerate(nodes_of_shards) if n == node]
    pool = here or list(range(len(nodes_of_shards)))
    return pool[index % len(pool)]


class ShardedSampler:
    """A learner's draws from K shards. ``rank`` / ``world``: this learner's share of each batch
    (core/shards.py: stratified_fractions); ``agree``: the group's word of the leader (rank 0)."""

    def __init__(self, cfg: Config, handles: list[Any], rank: int, world: int, seed: int,
                 agree: Callable[[bool], bool]):
        a = cfg.apex
        self.handles, self.rank, self.world, self.agree = handles, rank, world, agree
        self.capacity = shard_capacity(cfg, len(handles))
        self.num_batches, self.batch_size = a.batches_per_sample, cfg.learner.batch_size
        self.limiter = RateLimiter(cfg.train.replay_ratio, cfg.learning_starts_env_steps, a.slack_updates)
        self.statuses: list[ShardStatus] = [NO_SHARD] * len(handles)
        self.updates = 0   # sampled (claimed) by the group so far, the same count on every learner
        self.rng = np.random.default_rng(seed)
        self._pending: tuple | None = None   # the next group, drawn while the current one trains
        self._started = False

    # ---- what the learner calls ----
    def next(self, beta: float) -> Batch | None:
        """The next group of ``apex.batches_per_sample`` batches of this learner's share, stacked;
        None when the leader waited SAMPLE_WAIT_S for the ratio to allow it (every learner then
        gets None: they stay in step)."""
        if not self._started:   # a resumed run: the updates the shards were last told of
            self._poll()
            self.updates = max(s.updates for s in self.statuses)
            self._started = True
        if self._pending is None:
            if not self.agree(self.rank == 0 and self._wait_until_allowed()):
                return None
            self._pending = self._draw()
        current, self._pending = self._pending, None
        if self.agree(self.rank == 0 and self._allowed()):
            self._pending = self._draw()
        return self._gather(current, beta)

    def update_priorities(self, slots: np.ndarray, td_errors: np.ndarray) -> None:
        """New priorities, each to the shard its transition came from (not waited for)."""
        for handle, (positions, values) in zip(self.handles, shards.route(
                slots, td_errors, self.capacity, len(self.handles)), strict=True):
            if len(positions):
                handle.update_priorities.remote(positions, values)

    # ---- the replay ratio over every shard (the leader's judgement) ----
    def _allowed(self) -> bool:
        limiter = self.limiter
        limiter.env_steps, limiter.updates = sum(s.inserted_env_steps for s in self.statuses), self.updates
        return sum(s.size for s in self.statuses) >= self.batch_size and limiter.can_sample(self.num_batches)

    def _wait_until_allowed(self) -> bool:
        """Until the ratio allows the next group, telling every shard what this learner knows
        (their actors may be waiting for the updates); False after SAMPLE_WAIT_S."""
        deadline, pause = time.perf_counter() + SAMPLE_WAIT_S, 0.001
        while not self._allowed():
            if time.perf_counter() > deadline:
                return False
            time.sleep(pause)
            pause = min(2 * pause, 0.02)
            self._poll()
        return True

    def _elsewhere(self, k: int) -> int:
        """The env steps the other shards have reported (a lower bound), for shard ``k``."""
        return sum(s.inserted_env_steps for s in self.statuses) - self.statuses[k].inserted_env_steps

    def _poll(self) -> None:
        refs = [h.sync.remote(self.updates, self._elsewhere(k)) for k, h in enumerate(self.handles)]
        self.statuses = ray.get(refs, timeout=DRAW_TIMEOUT_S)

    # ---- drawing ----
    def _draw(self) -> tuple[int, list[np.ndarray], list[Any]]:
        """Ask every shard for its draws of the next group (one call each, not waited for); a
        learner that has not heard of any transition yet (the leader judged, not this one) asks first."""
        if sum(s.mass for s in self.statuses) <= 0:
            self._poll()
        fractions = shards.stratified_fractions(self.rng, self.num_batches, self.batch_size, self.rank, self.world)
        split = shards.split_by_mass(fractions, np.array([s.mass for s in self.statuses]))
        self.updates += self.num_batches
        refs = [h.draw.remote(local, self.updates, self._elsewhere(k))
                for k, (h, (_, local)) in enumerate(zip(self.handles, split, strict=True))]
        return fractions.size, [positions for positions, _ in split], refs

    def _gather(self, pending: tuple[int, list[np.ndarray], list[Any]], beta: float) -> Batch:
        num_draws, positions, refs = pending
        answers: list[ShardDraw] = ray.get(refs, timeout=DRAW_TIMEOUT_S)
        self.statuses = [answer.status for answer in answers]
        min_leaf = min(s.min_leaf for s in self.statuses)
        return shards.combine([(p, answer.batch, answer.leaves) for p, answer in zip(positions, answers, strict=True)],
                              num_draws, self.capacity, min_leaf, beta)
