"""apex's experience actor: a vector env whose every sub-environment explores with its own fixed
epsilon; it sends n-step transitions with initial priorities to the replay in batches (with
apex.replay_shards, to a shard on its own node), and takes the learner's newest weights through
its weights client (asked once per insert, never waited for)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError

from distdqn.config import Config
from distdqn.core.policy import initial_priorities
from distdqn.core.records import Episodes, Experience
from distdqn.core.transitions import Transitions
from distdqn.envs import EnvInfo
from distdqn.local import build
from distdqn.runtime.messages import ActorReport
from distdqn.runtime.process import keep_off, process_identity, resolve, set_worker_threads
from distdqn.runtime.roles.replay_server import SAMPLE_WAIT_S
from distdqn.runtime.shards import shard_for
from distdqn.runtime.weights import WeightsClient

STARTUP_TIMEOUT_S = 120.0   # for the learner's first publication


def blocks_per_insert(cfg: Config) -> int:
    """apex.blocks_per_insert, or the blocks the learner's ``weight_sync_period`` updates consume."""
    if cfg.apex.blocks_per_insert is not None:
        return cfg.apex.blocks_per_insert
    block_env_steps = cfg.train.steps_per_collect * cfg.env.num_envs
    return max(1, round(cfg.apex.weight_sync_period / (cfg.train.replay_ratio * block_env_steps)))


@ray.remote
class ExperienceActor:
    def __init__(self, cfg: Config, info: EnvInfo, index: int, replays: list, replay_nodes: list[str | None],
                 learner: Any, epsilons: np.ndarray, seed: int, isolations: list | None = None):
        """``replays``: the replay or its shards, on ``replay_nodes`` (the one on this node is
        used, shards.shard_for); ``isolations``: LearnerWorker.isolate's references."""
        keep_off(resolve(isolations or []))
        set_worker_threads(cfg.apex.actor_cpus)
        self.cfg = cfg
        network = build.build_network(cfg, info)
        self.actor = build.build_actor(cfg, info, {k: v.numpy() for k, v in network.state_dict().items()}, seed)
        self.shard = shard_for(index, ray.get_runtime_context().get_node_id(), replay_nodes)
        self.replay = replays[self.shard]
        self.weights = WeightsClient(source=learner, update_period=1)   # asked once per insert
        first, _ = self.weights.offer(ray.get(learner.published.remote(), timeout=STARTUP_TIMEOUT_S))
        self.actor.policy.set_weights(first)
        self.epsilons = np.asarray(epsilons, dtype=np.float64)
        # initial priorities in the learner's unit: |TD error| from the actor's own network; a
        # categorical learner's are cross-entropies, which need the target distribution the actor
        # does not hold, so its new transitions take the replay's running maximum (Schaul et al.)
        self.sends_priorities = cfg.replay.prioritized and cfg.network.atoms == 1
        self._pending: tuple | None = None   # the insert in flight: its arguments, its reference,
        self._pending_ref: Any = None        # and the weights version its data was collected with
        self._pending_version = -1
        self._lags: list[int] = []
        self._accepted_env_steps = 0         # of the inserts accepted in this call

    def collect(self, num_blocks: int) -> ActorReport:
        """Collect ``num_blocks`` blocks, sending them to the replay every ``apex.blocks_per_insert``
        blocks. An insert is not waited for: the next one waits for it first, so collection
        overlaps the replay's work, at most one insert is in flight, and the replay's rate limiter
        holds the actor back while the learner is behind (back-pressure)."""
        experience, refusals, self._lags, self._accepted_env_steps = Experience(), 0, [], 0
        per_insert = blocks_per_insert(self.cfg)
        for first in range(0, num_blocks, per_insert):
            self._take_weights()
            rollouts = [self.actor.collect(self.cfg.train.steps_per_collect, self.epsilons)
                        for _ in range(min(per_insert, num_blocks - first))]
            t = Transitions.concatenate([r.transitions for r in rollouts])
            env_steps = sum(r.env_steps for r in rollouts)
            priorities = (initial_priorities(self.actor.policy, t.obs, t.action, t.reward, t.next_obs,
                                             t.terminated, t.discount) if self.sends_priorities else None)
            refusals += self.settle()
            self._pending = (t, priorities, env_steps)
            self._pending_ref = self.replay.add.remote(t, priorities, env_steps)
            self._pending_version = self.weights.version
            episodes = Episodes.of(np.concatenate([r.episode_returns for r in rollouts]),
                                   np.concatenate([r.episode_lengths for r in rollouts]))
            experience = Experience(experience.env_steps + env_steps, experience.episodes + episodes,
                                    experience.non_finite_steps + sum(r.non_finite_steps for r in rollouts))
        return ActorReport(experience, refusals, float(np.mean(self._lags)) if self._lags else None,
                           self.weights.version, self._accepted_env_steps)

    def _take_weights(self) -> None:
        weights = self.weights.update()
        if weights is not None:
            self.actor.policy.set_weights(weights)

    def settle(self) -> int:
        """Wait until the insert in flight is accepted, sending it again each time the replay
        refuses it (its rate limiter waited SAMPLE_WAIT_S for the learner); the number of refusals.
        An answer takes as long as the link to the replay makes it (a slow or briefly cut link
        slows this actor, nothing else); TimeoutError after ``apex.stall_timeout_s`` of refusals
        or silence, the run's own bound on a replay that makes no progress."""
        refusals, stall_s = 0, self.cfg.apex.stall_timeout_s
        deadline = time.perf_counter() + stall_s
        while self._pending_ref is not None:
            try:
                answer = ray.get(self._pending_ref, timeout=max(SAMPLE_WAIT_S, deadline - time.perf_counter()))
            except GetTimeoutError:
                raise TimeoutError(f"the replay has not answered an insert for {stall_s:.0f} s") from None
            if answer.accepted:
                # learner updates between the weights that acted and the newest this actor has seen
                self._lags.append(max(0, self.weights.newest_seen - self._pending_version))
                self._accepted_env_steps += self._pending[2]
                break
            refusals += 1
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the replay refused inserts for {stall_s:.0f} s")
            self._pending_ref = self.replay.add.remote(*self._pending)
        self._pending, self._pending_ref = None, None
        return refusals

    def identity(self) -> dict[str, Any]:
        return process_identity(**({"shard": self.shard} if self.cfg.apex.replay_shards != 1 else {}))
