"""A test's attacker, kept out of the package: runs `distdqn train ARGS` (argv[2:]) with the
federated clients whose indices argv[1] lists (comma-separated) replaced by ones that send
garbage (NaN and 1e6-sized values) instead of their update, every round."""

from __future__ import annotations

import sys

import numpy as np
import ray

from distdqn import cli
from distdqn.runtime.messages import ClientMessage, Weights
from distdqn.runtime.roles.federated_client import FederatedClient
from distdqn.topologies import federated


def attacking(poisoned: set[int]):
    """FederatedClient, but the clients in ``poisoned`` send garbage as their update."""

    class Attacker(FederatedClient.__ray_actor_class__):
        def train_round(self, weights: Weights, num_updates: int) -> ClientMessage:
            message = super().train_round(weights, num_updates)
            if self.index in poisoned:
                message.update = {k: np.where(self.rng.random(v.shape) < 0.5, np.nan, 1e6).astype(v.dtype)
                                  for k, v in message.update.items()}
            return message

    return ray.remote(Attacker)


if __name__ == "__main__":
    federated.FederatedClient = attacking({int(i) for i in sys.argv[1].split(",")})
    sys.argv = ["distdqn", *sys.argv[2:]]
    cli.main()
