"""A federated client: a device with its own environment variant, its own replay and its local
training (a Replica). Its one training call returns a ClientMessage and nothing else: transitions,
observations, episode-by-episode returns and replay contents never leave it (the server checks
every message with ``check_message``; a test holds real messages to it)."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from distdqn.config import Config
from distdqn.core import aggregate
from distdqn.core.records import UpdateStats
from distdqn.envs import EnvInfo
from distdqn.local.replica import Replica
from distdqn.runtime.messages import ClientMessage, Weights
from distdqn.runtime.process import process_identity, set_worker_threads
from distdqn.runtime.weights import WeightsClient, take_weights


@ray.remote
class FederatedClient:
    def __init__(self, cfg: Config, info: EnvInfo, index: int, num_clients: int, seed: int, cpus: float):
        set_worker_threads(cpus, cfg.train.torch_threads)
        self.cfg, self.index = cfg, index
        self.replica = Replica(cfg, info, index, num_clients, seed, owns_target=False)   # the server keeps it
        # a round's weights take as long as the link makes them (the round goes on without a late
        # client), up to the run's own stall bound
        self.weights = WeightsClient(fetch_timeout_s=cfg.workers.stall_timeout_s)
        self.rng = np.random.default_rng(seed + 99)

    def train_round(self, weights: Weights, num_updates: int) -> ClientMessage:
        """From the global weights, collect and train ``num_updates`` local updates (FedProx:
        each gradient with the proximal term toward the global weights); the update, clipped and
        noised here under local DP (under central DP the server does both)."""
        f = self.cfg.federated
        take_weights(self.replica.learner, self.weights, weights)
        learner = self.replica.learner
        start = learner.get_weights()
        learner.set_weights(start)   # a fresh start from the global model, as in FedAvg
        updates = self._local_updates(num_updates, f.proximal_mu)
        update = aggregate.difference(learner.get_weights(), start)
        metrics = updates.means()
        if f.dp.mode == "local":
            update, metrics["update_norm"] = aggregate.privatize(update, f.dp.clip, f.dp.noise_multiplier, self.rng)
        learner.set_weights(start)   # held weights stay the global model's
        seen = self.replica.report()
        return ClientMessage(update, weights.version, len(self.replica.replay), seen.env_steps, updates.count,
                             seen.episodes.count, float(seen.episodes.return_mean),
                             float(seen.episodes.length_mean), {k: float(v) for k, v in metrics.items()})

    def _local_updates(self, num_updates: int, mu: float) -> UpdateStats:
        """FedProx (mu > 0): each gradient with the proximal term toward the global weights."""
        if mu == 0:
            return self.replica.train(num_updates)
        stats, learner = UpdateStats(), self.replica.learner
        anchor = learner.flat_params.numpy().copy()
        for _ in range(num_updates):
            stats.add(self.replica.flat_gradient().metrics)
            learner.apply_gradient(aggregate.proximal_gradient(learner.flat_grads.numpy(), learner.flat_params.numpy(),
                                                               anchor, mu))
        return stats

    def identity(self) -> dict[str, Any]:
        return process_identity(index=self.index)
