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

from pathlib import Path
from typing import Any

import numpy as np
import ray

from distdqn.config import Config
from distdqn.core import aggregate
from distdqn.core.actor import evaluate
from distdqn.envs import EnvInfo, make_vector_env
from distdqn.runtime.client import FederatedClient, check_message
from distdqn.runtime.conductor import WorkerRun
from distdqn.runtime.session import RunResult


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    f = cfg.federated
    job = WorkerRun(cfg, run_dir, info, actor_class=FederatedClient, save_workers=False)
    try:
        # ---- build: the server's model here; clients (each with its own env variant) on the cluster ----
        server = job.start_server(resume)
        for key in ("rounds", "rounds_abandoned", "skipped", "rejected"):
            job.counters.setdefault(key, 0)
        shapes = {k: v.shape for k, v in server.weights().items()}
        variants = [make_vector_env(cfg.for_client(i).env, cfg.eval.num_envs) for i in range(len(f.clients))]
        client_returns: list[float] = []
        rng = np.random.default_rng(cfg.seed + 17)
        job.open(server.weights())
        pool = job.pool
        per_round = max(1, round(f.clients_per_round * pool.num_workers))
        late: dict[Any, int] = {}   # calls that missed their round -> client

        def evaluate_variants() -> list[float]:
            """The global model's greedy return on each client's environment variant."""
            job.policy.set_weights(server.weights())
            return [float(evaluate(job.policy, env, cfg.eval.episodes, cfg.eval.epsilon,
                                   seed=cfg.seed * 31 + i).mean()) for i, env in enumerate(variants)]

        # ---- loop: sample clients -> local training on their own data -> aggregate what came back ----
        with job.conducting():
            while job.env_steps < cfg.train.total_env_steps:
                idle = [i for i in range(pool.num_workers) if i not in late.values()]
                if not idle:   # every client is still busy with an earlier round
                    job.check_stall()
                    job.collect_late(late, lambda m: _absorb(job, m), wait_s=1.0)
                    continue
                chosen = rng.choice(idle, size=min(per_round, len(idle)), replace=False)
                calls = {pool.handles[i].train_round.remote(job.weights_for(i, server), f.local_steps): int(i)
                         for i in chosen}
                ready, missed = ray.wait(list(calls), num_returns=len(calls), timeout=f.round_timeout_s)
                for ref in missed:
                    late[ref] = calls[ref]
                job.counters["skipped"] += len(missed)
                job.collect_late(late, lambda m: _absorb(job, m))

                messages = []
                for ref in ready:
                    message = pool.result(ref)
                    if message is None:   # the client died: a new device takes its place
                        job.counters["skipped"] += 1
                        job.worker_died(calls[ref])
                        continue
                    _absorb(job, message)
                    problem = check_message(message, shapes)
                    if problem is not None:
                        job.counters["rejected"] += 1
                        job.session.note(f"client {calls[ref]}: message rejected ({problem})")
                        continue
                    messages.append(message)

                # ---- aggregate ----
                job.counters["rounds"] += 1
                if len(messages) < f.min_clients:
                    job.counters["rounds_abandoned"] += 1
                    job.session.note(f"round {job.counters['rounds']}: {len(messages)} of {len(calls)} sampled "
                                     f"clients answered, fewer than federated.min_clients={f.min_clients}; "
                                     f"the global model is unchanged")
                    job.check_stall()
                    continue
                updates = [m["update"] for m in messages]
                if f.aggregator == "fedavg":
                    counts = [m["num_samples"] for m in messages]
                    delta = aggregate.mean_of(updates, counts if sum(counts) > 0 else None)
                elif f.aggregator == "median":
                    delta = aggregate.median_of(updates)
                else:
                    delta = aggregate.trimmed_mean_of(updates, min(f.trim, (len(updates) - 1) // 2))
                server.apply_delta(delta, f.local_steps)
                job.learner_updates = server.version
                job.progressed()

                extra: dict[str, Any] = {"rounds": job.counters["rounds"], "clients_answered": len(messages),
                                         "skipped": job.counters["skipped"]}
                if f.dp_clip is not None:
                    extra.update(dp_clip=f.dp_clip, dp_noise_multiplier=f.dp_noise_multiplier)
                if variants and job.session.due_for_evaluation(job.env_steps):
                    client_returns = evaluate_variants()
                extra.update({f"eval_return_client{i}": r for i, r in enumerate(client_returns)})
                stop = job.housekeeping(server.weights, server.learner.state_dict, **extra)
                if job.session.solved_at is not None:
                    job.counters.setdefault("rounds_to_solve", job.counters["rounds"])
                if stop:
                    break

        # ---- tear down: the global model on every variant, final evaluation, checkpoint, summary ----
        if variants:
            client_returns = evaluate_variants()
        for env in variants:
            env.close()
        return job.finish(server.weights(), server.learner.state_dict(), late,
                          aggregator=f.aggregator, client_eval_returns=client_returns,
                          dp_clip=f.dp_clip, dp_noise_multiplier=f.dp_noise_multiplier)
    finally:
        job.close()


def _absorb(job: WorkerRun, message: dict[str, Any]) -> None:
    """A client's env steps and its episodes (a count and a mean: all that it tells the server)."""
    metrics = message.get("metrics") if isinstance(message, dict) else None
    if not isinstance(metrics, dict):
        return
    episodes = int(metrics.get("episodes", 0))
    mean = metrics.get("episode_return_mean", float("nan"))
    job.absorb({"env_steps": int(metrics.get("env_steps", 0)),
                "episode_returns": np.full(episodes, mean),
                "episode_lengths": np.full(episodes, metrics.get("episode_length_mean", 0.0))})
    if metrics.get("local_updates"):
        job.add_update_metrics({k: metrics[k] for k in ("loss", "q_mean", "grad_norm", "update_norm") if k in metrics}, 1)

