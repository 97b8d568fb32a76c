"""Replica: what each worker of a data-parallel topology (sync_ps, async_ps, allreduce, federated)
owns: a vector env with its Actor, a local replay, and a full DQNLearner replica. No Ray here.

Its steps are separate calls, so that a loop shows them in order (``topologies/single.py``):

    collect()      train.steps_per_collect vector steps, epsilon-greedy    -> a Rollout
    store(rollout) its n-step transitions into the replay; env steps and episodes counted
    sample_owed()  the batches the replay ratio now owes (core/ratio.py)
    learn(batch)   one learner update, its new priorities back into the replay
    sync_policy()  the actor acts with the learner's newest weights

A data-parallel worker draws batches one at a time (``next_batch``: collect and store as long as
none is owed), exactly in the order ``single`` does.

``single`` is one Replica in one process, and a one-worker sync_ps run is the single run, update
for update. The replay ratio and
``learning_starts`` apply to each worker's own replay (batches drawn per local env step), so every
transition is replayed as often as in ``single`` whatever the number of workers; exploration and the
importance-sampling exponent follow the whole run's env steps, estimated as local env steps times
the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from distdqn.config import Config
from distdqn.core.actor import Rollout
from distdqn.core.learner import StepResult
from distdqn.core.records import Episodes, Experience, UpdateStats
from distdqn.core.transitions import Batch
from distdqn.envs import EnvInfo, env_state, load_env_state
from distdqn.local import build


def replica_seed(seed: int, index: int, generation: int = 0) -> int:
    """The seed of process ``index`` of a role (a worker, a client, an actor) in its
    ``generation`` (restarts); index 0 of the first generation uses the run's seed, as ``single``."""
    return seed + 1000 * index + 7919 * generation


class Replica:
    def __init__(self, cfg: Config, info: EnvInfo, index: int, num_replicas: int, seed: int,
                 owns_target: bool = True):
        """``owns_target``: the replica's learner updates its own target network (False: a server
        keeps it and sends it)."""
        torch.manual_seed(seed)
        self.cfg = cfg
        self.index = index
        self.num_replicas = num_replicas
        self.learner = build.build_learner(cfg, info, owns_target)
        self.actor = build.build_actor(cfg, info, self.learner.get_weights(), seed=seed)
        self.replay = build.build_replay(cfg, info, seed=seed + 1)
        self.ratio = build.build_replay_ratio(cfg)
        self.epsilon = build.build_epsilon_schedule(cfg)
        self.beta = build.build_beta_schedule(cfg)
        self.env_steps = 0         # local env steps
        self.batches_drawn = 0     # batches sampled (handed out or pending)
        self._pending: list[Batch] = []
        self._experience = Experience()   # since the last report()

    @property
    def run_env_steps(self) -> int:
        """This worker's estimate of the whole run's env steps (for the schedules)."""
        return self.env_steps * self.num_replicas

    @property
    def pending(self) -> int:
        """Batches drawn and not yet handed out."""
        return len(self._pending)

    # ---- weights ----
    def set_weights(self, weights: dict, target: dict | None = None) -> None:
        self.learner.set_weights(weights, target)

    def sync_policy(self) -> None:
        """The actor acts with the learner's newest weights from now on."""
        self.actor.policy.set_weights(self.learner.get_weights())

    # ---- the steps of the loop ----
    def collect(self) -> Rollout:
        """``train.steps_per_collect`` vector steps with the current policy, epsilon-greedy."""
        return self.actor.collect(self.cfg.train.steps_per_collect, self.epsilon(self.run_env_steps))

    def store(self, rollout: Rollout) -> None:
        """The rollout's transitions into the replay; its env steps and episodes counted."""
        self.replay.add(rollout.transitions)
        self.env_steps += rollout.env_steps
        episodes = Episodes.of(rollout.episode_returns, rollout.episode_lengths)
        self._experience = Experience(self._experience.env_steps + rollout.env_steps,
                                      self._experience.episodes + episodes,
                                      self._experience.non_finite_steps + rollout.non_finite_steps)

    def sample_owed(self) -> list[Batch]:
        """The batches the replay ratio owes for the env steps stored so far."""
        owed = self.ratio.due(self.env_steps, self.batches_drawn)
        if not owed or not len(self.replay):   # empty: every step so far was non-finite (env.non_finite=skip)
            return []
        self.batches_drawn += owed
        return self.replay.sample_batches(owed, self.cfg.learner.batch_size, self.beta(self.run_env_steps))

    def learn(self, batch: Batch, average: Callable[[torch.Tensor], None] | None = None) -> StepResult:
        """One learner update on ``batch``; its new priorities go back into the replay. ``average``
        (all-reduce) replaces the clipped gradient, in place, by its mean over the replicas first."""
        if average is None:
            result = self.learner.step(batch)
        else:
            result = self.learner.gradient(batch)
            average(self.learner.flat_grads)
            self.learner.apply_gradient()
        self.replay.update_priorities(batch.indices, result.priorities)
        return result

    # ---- a worker's stream of batches ----
    def next_batch(self, allow_collect: bool = True) -> Batch | None:
        """The next batch owed, collecting with the newest weights as long as needed; None if none
        is owed and collecting is not allowed (the run's env-step budget is spent)."""
        while not self._pending:
            if not allow_collect:
                return None
            self.collect_owed()
        return self._pending.pop(0)

    def collect_owed(self) -> None:
        """One collection with the newest weights; the batches it makes owed join the pending ones."""
        self.sync_policy()
        self.store(self.collect())
        self._pending.extend(self.sample_owed())

    def flat_gradient(self, allow_collect: bool = True) -> StepResult | None:
        """The clipped gradient on the next batch, left in ``learner.flat_grads`` (no copy): its
        result, or None if no batch is owed and collecting is not allowed."""
        batch = self.next_batch(allow_collect)
        if batch is None:
            return None
        result = self.learner.gradient(batch)
        self.replay.update_priorities(batch.indices, result.priorities)
        return result

    def work(self, gradient: bool, local_steps: int, allow_collect: bool,
             stats: UpdateStats) -> tuple[np.ndarray | None, int]:
        """A parameter-server worker's share: one gradient (``gradient``) or ``local_steps`` local
        updates; returns the vector to push (the flat gradient, or the model: a view of the
        learner's buffer, valid until the next work) and the learner updates in it, (None, 0)
        when no batch was owed. Its updates' metrics go into ``stats``."""
        if gradient:
            result = self.flat_gradient(allow_collect)
            if result is None:
                return None, 0
            stats.add(result.metrics)
            return self.learner.flat_grads.numpy(), 1
        done = self.train(local_steps, allow_collect=allow_collect)
        stats.merge(done)
        return (self.learner.flat_params.numpy() if done.count else None), done.count

    def train(self, num_updates: int, allow_collect: bool = True) -> UpdateStats:
        """Up to ``num_updates`` local learner updates on the next batches owed."""
        stats = UpdateStats()
        for _ in range(num_updates):
            batch = self.next_batch(allow_collect)
            if batch is None:
                break
            stats.add(self.learn(batch).metrics)
        return stats

    def report(self) -> Experience:
        """Env steps and ended episodes since the previous report."""
        experience, self._experience = self._experience, Experience()
        return experience

    # ---- checkpointing (batches already drawn but not yet used are dropped) ----
    def state_dict(self, with_replay: bool = True, with_env: bool = False) -> dict[str, Any]:
        """``with_env``: the vector env's state too, as data, where the env keeps it in data
        (``envs.DATA_STATE_ENVS``; then a resumed run continues the same episodes: ``single``'s
        exact resume); None where it does not."""
        state = {"learner": self.learner.state_dict(), "actor": self.actor.state_dict(),
                 "env_steps": self.env_steps, "batches_drawn": self.batches_drawn}
        if with_replay:
            state["replay"] = self.replay.state_dict()
        if with_env:
            state["env"] = env_state(self.actor.env)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore the replica; True if its env's episodes go on (the env's state was saved), False
        if they start afresh."""
        self.learner.load_state_dict(state["learner"])
        env_restored = state.get("env") is not None and load_env_state(self.actor.env, state["env"])
        self.actor.load_state_dict(state["actor"], env_restored)
        self.env_steps, self.batches_drawn = int(state["env_steps"]), int(state["batches_drawn"])
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])
        self._pending = []
        self.sync_policy()
        return env_restored

    def close(self) -> None:
        self.actor.env.close()
