"""federated: federated DQN with FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data"), FedProx as an option (Li et al. 2020).

    FederatedClient 0 (its env variant, its replay) --+                      +-- global weights --+
    FederatedClient 1 (...)                         --+-- update, n_k,   --> server (this process):
          ...                                         |   scalar metrics     aggregate, target net,
    FederatedClient K-1                             --+                      evaluate on every variant

A round: the server samples a fraction of the clients and sends them the global weights; each
trains E local updates on experience it collects itself, and returns only its update
theta_k - theta, its sample count n_k and scalar metrics (a ClientMessage; transitions never leave
a client, not even into checkpoints); the server aggregates the updates that came back in time:
    fedavg:        theta <- theta + sum_k (n_k / n) (theta_k - theta)
    median:        theta <- theta + coordinate-wise median_k (theta_k - theta)
    trimmed_mean:  theta <- theta + coordinate-wise mean without the ``trim`` largest and smallest
Clients that miss the round's deadline, die, or send a malformed message are skipped for the
round; with fewer than ``federated.min_clients`` answers the round is abandoned, and the run says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from distdqn.config import Config
from distdqn.core import aggregate
from distdqn.core.actor import evaluate
from distdqn.core.records import Episodes, Experience, UpdateStats
from distdqn.envs import EnvInfo, make_vector_env
from distdqn.local.session import RunResult
from distdqn.runtime.conductor import Conductor, worker_conductor
from distdqn.runtime.messages import ClientMessage, RunCounters, RunState, check_message
from distdqn.runtime.roles.federated_client import FederatedClient


@dataclass
class FederatedCounters(RunCounters):
    rounds: int = 0
    rounds_abandoned: int = 0   # rounds with fewer than federated.min_clients answers
    skipped: int = 0            # sampled clients that missed the deadline or died
    rejected: int = 0           # malformed messages
    rounds_to_solve: int | None = None


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    f = cfg.federated
    job = worker_conductor(cfg, run_dir, info, FederatedCounters())
    try:
        # ---- build: the server's model here; clients (each with its own env variant) on the cluster ----
        server, pool = job.start_server(resume, FederatedClient)   # resumed: the global model only
        shapes = {k: v.shape for k, v in server.weights().items()}
        variants = [make_vector_env(cfg.for_client(i).env, cfg.eval.num_envs, evaluation=True) for i in range(len(f.clients))]
        client_returns: list[float] = []
        rng = np.random.default_rng(cfg.seed + 17)
        per_round = max(1, round(f.clients_per_round * pool.count))
        late: dict[Any, int] = {}           # calls that missed their round -> client

        def state() -> RunState:
            return RunState(server.learner.state_dict(), job.counters)

        # ---- loop: sample clients -> local training on their own data -> aggregate what came back ----
        with job.conducting():
            while job.counters.env_steps < cfg.train.total_env_steps:
                idle = [i for i in range(pool.count) if i not in late.values()]
                if not idle:   # every client is still busy with an earlier round
                    job.check_stall()
                    job.collect_late(late, lambda m: _absorb(job, m), wait_s=1.0)
                    continue
                calls = {pool.handles[i].train_round.remote(server.weights_for(i), f.local_steps): i
                         for i in map(int, rng.choice(idle, size=min(per_round, len(idle)), replace=False))}
                ready, missed = ray.wait(list(calls), num_returns=len(calls), timeout=f.round_timeout_s)
                late.update({ref: calls[ref] for ref in missed})
                job.counters.skipped += len(missed)
                job.collect_late(late, lambda m: _absorb(job, m))
                messages = _accepted(job, pool, calls, ready, shapes)

                # ---- aggregate ----
                job.counters.rounds += 1
                if len(messages) < f.min_clients:
                    job.counters.rounds_abandoned += 1
                    job.session.note(f"round {job.counters.rounds}: {len(messages)} of {len(calls)} sampled "
                                     f"clients answered, fewer than federated.min_clients={f.min_clients}; "
                                     f"the global model is unchanged")
                    job.check_stall()
                    continue
                delta = aggregate.aggregate(f.aggregator, [m.update for m in messages],
                                            [m.num_samples for m in messages], f.trim)
                server.apply_delta(delta, f.local_steps)
                job.counters.learner_updates = server.version
                job.progressed()
                if variants and job.session.due_for_evaluation(job.counters.env_steps):
                    client_returns = _evaluate_variants(job, server.weights(), variants)
                stop = job.housekeeping(server.weights, state, _round_row(job, len(messages), client_returns))
                if job.session.solved_at is not None and job.counters.rounds_to_solve is None:
                    job.counters.rounds_to_solve = job.counters.rounds
                if stop:
                    break

        # ---- tear down: the global model on every variant, final evaluation, checkpoint, summary ----
        client_returns = _evaluate_variants(job, server.weights(), variants, close=True)
        return job.finish(server.weights(), state(), late, aggregator=f.aggregator,
                          client_eval_returns=client_returns, dp_clip=f.dp_clip,
                          dp_noise_multiplier=f.dp_noise_multiplier)
    finally:
        job.close()


def _accepted(job: Conductor, pool: Any, calls: dict, ready: list, shapes: dict) -> list[ClientMessage]:
    """The well-formed messages among the answers in ``ready``; a dead client is replaced."""
    messages = []
    for ref in ready:
        message = pool.result(ref)
        if message is None:   # the client died: a new device takes its place
            job.counters.skipped += 1
            job.replace(calls[ref])
            continue
        _absorb(job, message)
        problem = check_message(message, shapes)
        if problem is not None:
            job.counters.rejected += 1
            job.session.note(f"client {calls[ref]}: message rejected ({problem})")
            continue
        messages.append(message)
    return messages


def _round_row(job: Conductor, answered: int, client_returns: list[float]) -> dict[str, Any]:
    """A metrics row's federated fields."""
    f = job.cfg.federated
    return {"rounds": job.counters.rounds, "clients_answered": answered, "skipped": job.counters.skipped,
            **({"dp_clip": f.dp_clip, "dp_noise_multiplier": f.dp_noise_multiplier} if f.dp_clip else {}),
            **{f"eval_return_client{i}": x for i, x in enumerate(client_returns)}}


def _absorb(job: Conductor, message: Any) -> None:
    """A client's env steps and episodes, as it reports them (a count and means: all it tells)."""
    if not isinstance(message, ClientMessage):
        return
    job.absorb(Experience(message.env_steps, Episodes.from_means(
        message.episodes, message.episode_return_mean, message.episode_length_mean)))
    if message.local_updates:
        job.add_updates(UpdateStats(message.local_updates,
                                    {k: v * message.local_updates for k, v in message.metrics.items()}))


def _evaluate_variants(job: Conductor, weights: dict, variants: list, close: bool = False) -> list[float]:
    """The global model's greedy return on each client's environment variant (``close``: then
    close the variants' environments)."""
    job.policy.set_weights(weights)
    returns = [float(evaluate(job.policy, env, job.cfg.eval.episodes, job.cfg.eval.epsilon,
                              seed=job.cfg.seed * 31 + i).mean()) for i, env in enumerate(variants)]
    for env in variants if close else []:
        env.close()
    return returns
