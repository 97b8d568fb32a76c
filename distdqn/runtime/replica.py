"""Replica: what each worker of a data-parallel topology (sync_ps, async_ps, allreduce, federated)
owns: a vector env with its Actor, a local replay, and a full DQNLearner replica. No Ray here.

It hands out training batches at the replay ratio, collecting experience when the replay ratio says
the local replay needs more, exactly as ``single`` does in one process:

    collect train.steps_per_collect vector steps -> store -> draw the batches now owed -> hand them out

``single`` is one Replica in one process, and a one-worker sync_ps run is the single run, update
for update. The replay ratio and
``learning_starts`` apply to each worker's own replay (batches drawn per local env step), so every
transition is replayed as often as in ``single`` whatever the number of workers; exploration and the
importance-sampling exponent follow the whole run's env steps, estimated as local env steps times
the number of workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distdqn.config import Config
from distdqn.core.learner import StepResult
from distdqn.core.transitions import Batch
from distdqn.envs import EnvInfo
from distdqn.runtime import components as build
from distdqn.runtime.session import restore_env, snapshot_env


def replica_seed(seed: int, index: int, generation: int = 0) -> int:
    """Worker ``index``'s seed; worker 0 of the first generation uses the run's seed (as ``single``)."""
    return seed + 1000 * index + 7919 * generation


class Replica:
    def __init__(self, cfg: Config, info: EnvInfo, index: int, num_replicas: int, seed: int):
        torch.manual_seed(seed)
        self.cfg = cfg
        self.index = index
        self.num_replicas = num_replicas
        self.learner = build.build_learner(cfg, info)
        self.actor = build.build_actor(cfg, info, self.learner.get_weights(), seed=seed)
        self.replay = build.build_replay(cfg, info, seed=seed + 1)
        self.epsilon = build.build_epsilon_schedule(cfg)
        self.beta = build.build_beta_schedule(cfg)
        self.env_steps = 0         # local env steps
        self.batches_drawn = 0     # batches handed out (gradients computed, or local updates)
        self._pending: list[Batch] = []
        self._policy_stale = False
        self._new_env_steps = 0
        self._returns: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []

    @property
    def run_env_steps(self) -> int:
        """This worker's estimate of the whole run's env steps (for the schedules)."""
        return self.env_steps * self.num_replicas

    @property
    def pending(self) -> int:
        return len(self._pending)

    # ---- weights ----
    def set_weights(self, weights: dict[str, np.ndarray], target: dict[str, np.ndarray] | None = None) -> None:
        self.learner.set_weights(weights, target)
        self._policy_stale = True

    @property
    def policy(self) -> Any:
        """The actor's policy, with the learner's newest weights (for evaluation, say)."""
        if self._policy_stale:
            self.actor.policy.set_weights(self.learner.get_weights())
            self._policy_stale = False
        return self.actor.policy

    # ---- experience ----
    def collect(self) -> None:
        """One collection: ``train.steps_per_collect`` vector steps into the local replay, then draw
        the batches that the replay ratio now owes."""
        _ = self.policy   # act with the newest weights
        rollout = self.actor.collect(self.cfg.train.steps_per_collect, self.epsilon(self.run_env_steps))
        self.replay.add(rollout.transitions)
        self.env_steps += rollout.env_steps
        self._new_env_steps += rollout.env_steps
        if len(rollout.episode_returns):
            self._returns.append(rollout.episode_returns)
            self._lengths.append(rollout.episode_lengths)
        owed = build.updates_due(self.cfg, self.env_steps, self.batches_drawn + len(self._pending))
        if owed:
            self._pending.extend(self.replay.sample_batches(owed, self.cfg.learner.batch_size,
                                                            self.beta(self.run_env_steps)))

    def next_batch(self, allow_collect: bool = True) -> Batch | None:
        """The next batch owed, collecting as long as needed; None if none is owed and collecting
        is not allowed (the run's env-step budget is spent)."""
        while not self._pending:
            if not allow_collect:
                return None
            self.collect()
        self.batches_drawn += 1
        return self._pending.pop(0)

    # ---- learning ----
    def gradient(self, allow_collect: bool = True) -> tuple[dict[str, np.ndarray] | None, dict[str, float]]:
        """The clipped gradient on the next batch (parameters unchanged), or (None, {})."""
        batch = self.next_batch(allow_collect)
        if batch is None:
            return None, {}
        grads, result = self.learner.compute_grads(batch)
        self.replay.update_priorities(batch.indices, result.priorities)
        return grads, result.metrics

    def train(self, num_updates: int, reduce_grads=None, allow_collect: bool = True) -> tuple[int, dict[str, float]]:
        """Up to ``num_updates`` local learner updates; returns (updates made, metric sums)."""
        sums: dict[str, float] = {}
        done = 0
        for _ in range(num_updates):
            batch = self.next_batch(allow_collect)
            if batch is None:
                break
            result: StepResult = self.learner.step(batch, reduce_grads)
            self.replay.update_priorities(batch.indices, result.priorities)
            for k, v in result.metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            done += 1
            self._policy_stale = True   # the next collection acts with the newest weights
        return done, sums

    # ---- reporting ----
    def drain(self) -> dict[str, Any]:
        """Env steps and finished episodes since the previous drain (for the driver's metrics)."""
        out = {"env_steps": self._new_env_steps, "replica_env_steps": self.env_steps,
               "episode_returns": np.concatenate(self._returns) if self._returns else np.zeros(0),
               "episode_lengths": (np.concatenate(self._lengths) if self._lengths
                                   else np.zeros(0, dtype=np.int64)),
               "pending": len(self._pending), "replay_size": len(self.replay)}
        self._new_env_steps, self._returns, self._lengths = 0, [], []
        return out

    # ---- checkpointing (batches already drawn but not yet used are dropped) ----
    def state_dict(self, with_replay: bool = True, with_env: bool = False) -> dict[str, Any]:
        """``with_env``: the vector env too, pickled where it can be (then a resumed run continues
        the same episodes: ``single``'s exact resume)."""
        state = {"learner": self.learner.state_dict(), "actor": self.actor.state_dict(),
                 "env_steps": self.env_steps, "batches_drawn": self.batches_drawn + len(self._pending)}
        if with_replay:
            state["replay"] = self.replay.state_dict()
        if with_env:
            state["env"] = snapshot_env(self.actor.env)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        env_restored = state.get("env") is not None
        if env_restored:
            self.actor.env.close()
            self.actor.env = restore_env(state["env"])
        self.actor.load_state_dict(state["actor"], env_restored)
        self.env_steps, self.batches_drawn = int(state["env_steps"]), int(state["batches_drawn"])
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])
        self._pending = []
        self._policy_stale = True

    def close(self) -> None:
        self.actor.env.close()
