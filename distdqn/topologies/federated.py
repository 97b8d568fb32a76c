"""federated: federated DQN with FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data"); FedProx (Li et al. 2020), server optimisers (Reddi et al.
2021, "Adaptive Federated Optimization"), client-level DP (McMahan et al. 2018) as options.

    FederatedClient 0 (its env variant, its replay) --+                      +-- global weights --+
    FederatedClient 1 (...)                         --+-- update, n_k,   --> server (this process):
          ...                                         |   scalar metrics     aggregate, server step,
    FederatedClient K-1                             --+                      target net, accountant,
                                                                             evaluate on every variant

A round: the server samples a fraction of the clients and sends them the global weights; each
trains E local updates on experience it collects itself, and returns only its update
theta_k - theta, its sample count n_k and scalar metrics (a ClientMessage; transitions never leave
a client, not even into checkpoints); the server aggregates the updates that came back in time:
    fedavg:        Delta = sum_k (n_k / n) (theta_k - theta)
    median:        Delta = coordinate-wise median_k (theta_k - theta)
    trimmed_mean:  Delta = coordinate-wise mean without the ``trim`` largest and smallest
    dp central:    Delta = (sum_k clip(theta_k - theta) + Gaussian noise) / (q K)   (core/privacy.py)
and steps along it: theta <- theta + server_optimizer(Delta) (fedavg: theta + Delta).
Clients that miss the round's deadline, die, or send a malformed message are skipped for the
round; a late update is dropped, or (late_updates: stale_weighted) joins the next aggregate with
its weight discounted by its staleness. With fewer than ``federated.min_clients`` answers the round
is abandoned, and the run says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from distdqn.config import Config
from distdqn.core import aggregate, privacy
from distdqn.core.actor import evaluate
from distdqn.core.finite import NonFiniteStreak, finite
from distdqn.core.learner import DQNLearner
from distdqn.core.records import Episodes, Experience, UpdateStats
from distdqn.core.server_optimizer import ServerOptimizer
from distdqn.core.staleness import staleness_weight
from distdqn.envs import EnvInfo, make_vector_env
from distdqn.local import build
from distdqn.local.session import RunResult
from distdqn.runtime.conductor import Conductor, worker_conductor
from distdqn.runtime.messages import ClientMessage, RunCounters, RunState, check_message
from distdqn.runtime.pool import RolePool
from distdqn.runtime.roles.federated_client import FederatedClient
from distdqn.runtime.weights import PushedWeights


@dataclass
class FederatedCounters(RunCounters):
    rounds: int = 0
    rounds_abandoned: int = 0   # rounds with fewer than federated.min_clients answers
    skipped: int = 0            # sampled clients that missed the deadline or died
    rejected: int = 0           # malformed messages
    late_used: int = 0          # late updates folded into a later aggregate (stale_weighted)
    late_dropped: int = 0       # late updates dropped
    rounds_to_solve: int | None = None
    dp_rounds: int = 0          # rounds released under DP (the accountant's state) ...
    dp_client_rounds: list[int] = field(default_factory=list)   # ... and each client's (local DP)


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    f = cfg.federated
    job = worker_conductor(cfg, run_dir, info, FederatedCounters())
    try:
        # ---- build: the server's model and step here; clients (each its env variant) on the cluster ----
        learner = build.build_learner(cfg, info)   # the global model, its optimizer unused: the server steps
        pool = job.start_workers(FederatedClient)
        job.restore(resume, learner)                # resumed: the global model only
        job.open()
        rounds = Rounds(job, learner, pool, resume)
        variants = [make_vector_env(cfg.for_client(i).env, cfg.eval.num_envs, evaluation=True) for i in range(len(f.clients))]
        variant_policy = build.build_policy(cfg, info, learner.get_weights())
        client_returns: list[float] = []
        c = job.counters

        # ---- loop: sample clients -> local training on their own data -> aggregate -> server step ----
        with job.conducting():
            while c.env_steps < cfg.train.total_env_steps:
                sampled = rounds.sample()
                if sampled is None:   # every client is still busy with an earlier round
                    job.check_stall()
                    rounds.collect_late(wait_s=1.0)
                    continue
                if not sampled:   # central DP's Poisson sampling drew no client: nothing is released
                    continue
                messages = rounds.train(sampled)
                if not rounds.step(messages, len(sampled)):   # too few answers: the round is abandoned
                    job.check_stall()
                    continue
                job.progressed()
                if variants and job.session.due_for_evaluation(c.env_steps):
                    client_returns = _evaluate_variants(job.cfg, variant_policy, learner.get_weights(), variants)
                stop = job.housekeeping(learner.get_weights, rounds.state, lambda m=messages, r=client_returns:
                                        _round_row(job, m, r, rounds.accountant))
                if job.session.solved_at is not None and c.rounds_to_solve is None:
                    c.rounds_to_solve = c.rounds
                if stop:
                    break

        # ---- tear down: the global model on every variant, final evaluation, checkpoint, summary ----
        client_returns = _evaluate_variants(cfg, variant_policy, learner.get_weights(), variants, close=True)
        rounds.close()
        return job.finish(learner.get_weights(), rounds.state(),
                          FederatedSummary(f.aggregator, f.server_optimizer, f.late_updates, client_returns),
                          _privacy_summary(cfg, rounds.accountant))
    finally:
        job.close()


class Rounds:
    """The server's side of the rounds: which clients train, their calls and late answers, the
    aggregate and the server's step, and the privacy accountant."""

    def __init__(self, job: Conductor, learner: DQNLearner, pool: RolePool, resume: dict[str, Any] | None):
        cfg, f, c = job.cfg, job.cfg.federated, job.counters
        self.job, self.learner, self.pool, self.f = job, learner, pool, f
        self.weights = PushedWeights()
        self.optimizer = ServerOptimizer(f.server_optimizer, f.server_learning_rate, f.server_beta1,
                                         f.server_beta2, f.server_tau)
        if resume is not None and resume.get("server_optimizer") is not None:
            self.optimizer.load_state_dict(resume["server_optimizer"])
        self.accountant = None if f.dp.mode == "off" else privacy.PrivacyAccountant(
            f.dp.mode, f.dp.noise_multiplier, f.clients_per_round, f.dp.delta, pool.count,
            c.dp_rounds, c.dp_client_rounds)
        self.shapes = {k: v.shape for k, v in learner.get_weights().items()}
        self.rng = np.random.default_rng(cfg.seed + 17)
        self.dp_rng = np.random.default_rng(cfg.seed + 23)
        self.refused = NonFiniteStreak(cfg.learner.max_non_finite_updates, "federated: the round's aggregate")
        self.late: dict[Any, int] = {}              # calls that missed their round -> client
        self.waiting: list[ClientMessage] = []      # late updates for the next aggregate (stale_weighted)
        job.add_closer(self.close)

    def sample(self) -> list[int] | None:
        """The next round's clients (counted as a round, and by the accountant: an upper bound on
        what is released); None when every client is still busy with an earlier round."""
        f, c = self.f, self.job.counters
        idle = [i for i in range(self.pool.count) if i not in self.late.values()]
        if not idle:
            return None
        sampled = _sample(self.rng, idle, self.pool.count, f.clients_per_round, f.dp.mode == "central")
        c.rounds += 1
        if self.accountant is not None:
            self.accountant.record_round(sampled)
            c.dp_rounds, c.dp_client_rounds = self.accountant.rounds, list(self.accountant.participations)
        return sampled

    def train(self, sampled: list[int]) -> list[ClientMessage]:
        """The sampled clients' local training from the global weights: the well-formed updates
        that came back within ``federated.round_timeout_s``; the others are late."""
        calls = {self.pool.handles[i].train_round.remote(self.weights.weights_for(i, self.learner), self.f.local_steps): i
                 for i in sampled}
        ready, missed = ray.wait(list(calls), num_returns=len(calls), timeout=self.f.round_timeout_s)
        self.late.update({ref: calls[ref] for ref in missed})
        self.job.counters.skipped += len(missed)
        self.collect_late()
        return _accepted(self.job, self.pool, calls, ready, self.shapes, self._replace)

    def collect_late(self, wait_s: float = 0.0) -> None:
        """Answers of calls that missed their round, waiting up to ``wait_s`` for the first; a
        client that died is replaced."""
        if not self.late:
            return
        if wait_s > 0:
            ray.wait(list(self.late), num_returns=1, timeout=wait_s)
        for ref in ray.wait(list(self.late), num_returns=len(self.late), timeout=0)[0]:
            index = self.late.pop(ref)
            message = self.pool.result(ref)
            if message is None:
                self._replace(index)
            else:
                self.take_late(message)

    def _replace(self, index: int) -> None:
        self.job.replace(index)
        self.weights.forget(index)   # the new client holds nothing yet

    def take_late(self, message: Any) -> None:
        """A late answer: its steps and episodes count; its update waits for the next aggregate
        (stale_weighted) or is dropped."""
        _absorb(self.job, message)
        if self.f.late_updates == "stale_weighted" and check_message(message, self.shapes) is None:
            self.waiting.append(message)
        elif isinstance(message, ClientMessage):
            self.job.counters.late_dropped += 1

    def step(self, messages: list[ClientMessage], asked: int) -> bool:
        """Aggregate the round's updates (and the late ones waiting) and take the server's step;
        False when fewer than ``federated.min_clients`` answered (the global model is unchanged)."""
        f, c = self.f, self.job.counters
        stale, self.waiting = self.waiting, []
        if len(messages) + len(stale) < f.min_clients:
            c.rounds_abandoned += 1
            c.late_dropped += len(stale)
            self.job.session.note(f"round {c.rounds}: {len(messages)} of {asked} sampled clients answered, "
                                  f"fewer than federated.min_clients={f.min_clients}; the global model is unchanged")
            return False
        delta = _aggregate(self.job.cfg, self.learner.updates, messages, stale, self.pool.count, self.dp_rng)
        c.late_used += len(stale)
        if not self.refused.check(finite(delta)):   # never applied, nor taken into the server optimizer's moments
            c.non_finite_updates += 1
            return True
        step = self.optimizer.step(delta)   # theta <- theta + server_optimizer(Delta), counted as E updates
        self.learner.set_weights(aggregate.add_scaled(self.learner.get_weights(), step, 1.0))
        self.learner.advance(f.local_steps)
        c.learner_updates = self.learner.updates
        return True

    def state(self) -> RunState:
        return RunState(self.learner.state_dict(), self.job.counters,
                        server_optimizer=self.optimizer.state_dict())

    def close(self) -> None:
        """Calls still late are dropped (a running call is not interrupted: Ray only drops queued ones)."""
        for ref in self.late:
            ray.cancel(ref, force=False)
        self.late.clear()


def _sample(rng: np.random.Generator, idle: list[int], num_clients: int, rate: float, poisson: bool) -> list[int]:
    """The round's clients among the idle ones: each with probability ``rate`` (``poisson``, as
    central DP's accountant assumes; possibly none), else ``rate`` of all clients (at least one)."""
    if poisson:
        return [i for i in idle if rng.random() < rate]
    size = min(max(1, round(rate * num_clients)), len(idle))
    return [int(i) for i in rng.choice(idle, size=size, replace=False)]


def _aggregate(cfg: Config, version: int, fresh: list[ClientMessage], stale: list[ClientMessage],
               num_clients: int, dp_rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The round's aggregate Delta of the fresh updates and the late ones (their weights
    discounted by how many rounds behind they are); under central DP the noised mean."""
    f = cfg.federated
    if f.dp.mode == "central":
        delta, _ = privacy.noised_mean([m.update for m in fresh], f.dp.clip, f.dp.noise_multiplier,
                                       f.clients_per_round * num_clients, dp_rng)
        return delta
    both = fresh + stale
    weights = [m.num_samples * staleness_weight((version - m.base_version) // f.local_steps, f.late_exponent)
               for m in both]
    return aggregate.aggregate(f.aggregator, [m.update for m in both], weights, f.trim)


@dataclass(frozen=True)
class FederatedSummary:
    aggregator: str
    server_optimizer: str
    late_updates: str
    client_eval_returns: list[float]   # the global model's greedy return on each client's variant


@dataclass(frozen=True)
class PrivacySummary:
    """The DP mode, and (epsilon, delta) spent (epsilon None: unbounded; all None without DP)."""

    dp_mode: str
    dp_clip: float | None = None
    dp_noise_multiplier: float | None = None
    dp_epsilon: float | None = None
    dp_delta: float | None = None


def _privacy_summary(cfg: Config, accountant: privacy.PrivacyAccountant | None) -> PrivacySummary:
    dp = cfg.federated.dp
    if accountant is None:
        return PrivacySummary(dp.mode)
    epsilon = accountant.epsilon()
    return PrivacySummary(dp.mode, dp.clip, dp.noise_multiplier, epsilon if np.isfinite(epsilon) else None, dp.delta)


def _accepted(job: Conductor, pool: Any, calls: dict, ready: list, shapes: dict,
              replace: Callable[[int], None]) -> list[ClientMessage]:
    """The well-formed messages among the answers in ``ready``; a dead client is replaced."""
    messages = []
    for ref in ready:
        message = pool.result(ref)
        if message is None:   # the client died: a new device takes its place
            job.counters.skipped += 1
            replace(calls[ref])
            continue
        _absorb(job, message)
        problem = check_message(message, shapes)
        if problem is not None:
            job.counters.rejected += 1
            job.session.note(f"client {calls[ref]}: message rejected ({problem})")
            continue
        messages.append(message)
    return messages


def _round_row(job: Conductor, messages: list[ClientMessage], client_returns: list[float],
               accountant: privacy.PrivacyAccountant | None) -> dict[str, Any]:
    """A metrics row's federated fields: how the round went, how far apart the clients' updates
    pointed (client drift: their mean pairwise cosine), and the privacy spent."""
    c = job.counters
    updates = [m.update for m in messages]
    row = {"rounds": c.rounds, "clients_answered": len(messages), "skipped": c.skipped,
           "late_used": c.late_used, "late_dropped": c.late_dropped}
    if len(updates) >= 2:
        row["client_update_cosine"] = aggregate.mean_pairwise_cosine(updates)
    if updates:
        row["client_update_norm"] = float(np.mean([aggregate.global_norm(u) for u in updates]))
    if accountant is not None:
        epsilon = accountant.epsilon()
        row.update(dp_epsilon=epsilon if np.isfinite(epsilon) else None, dp_delta=accountant.delta)
    return {**row, **{f"eval_return_client{i}": x for i, x in enumerate(client_returns)}}


def _absorb(job: Conductor, message: Any) -> None:
    """A client's env steps and episodes, as it reports them (a count and means: all it tells)."""
    if not isinstance(message, ClientMessage):
        return
    job.absorb(Experience(message.env_steps, Episodes.from_means(
        message.episodes, message.episode_return_mean, message.episode_length_mean)))
    if message.local_updates:
        job.add_updates(UpdateStats(message.local_updates,
                                    {k: v * message.local_updates for k, v in message.metrics.items()}))


def _evaluate_variants(cfg: Config, policy: Any, weights: dict, variants: list, close: bool = False) -> list[float]:
    """The global model's greedy return on each client's environment variant (``close``: then
    close the variants' environments)."""
    policy.set_weights(weights)
    returns = [float(evaluate(policy, env, cfg.eval.episodes, cfg.eval.epsilon, seed=cfg.seed * 31 + i).mean())
               for i, env in enumerate(variants)]
    for env in variants if close else []:
        env.close()
    return returns
