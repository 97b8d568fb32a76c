"""FederatedClient: a device in federated DQN. It owns its environment variant, its replay and its
local training (a Replica); its one training call returns a ClientMessage and nothing else.

    ClientMessage = {"update":      {param name: theta_k - theta}  (clipped and noised under DP),
                     "num_samples": transitions the client holds (n_k of FedAvg),
                     "metrics":     {name: float}                   scalars only}

Transitions, observations, episode-by-episode returns and replay contents never leave the client:
``check_message`` is what the server accepts, and a test holds real messages to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch

from distdqn.config import Config
from distdqn.core import aggregate
from distdqn.envs import EnvInfo
from distdqn.runtime.replica import Replica
from distdqn.runtime.workers import WeightsBox, WeightsHolder, process_identity, set_worker_threads

MESSAGE_KEYS = frozenset({"update", "num_samples", "metrics"})


def check_message(message: Any, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """None if ``message`` is a well-formed ClientMessage for parameters of ``shapes``, else why not."""
    if not isinstance(message, dict) or set(message) != MESSAGE_KEYS:
        return f"keys {sorted(message) if isinstance(message, dict) else type(message).__name__}"
    update = message["update"]
    if not isinstance(update, dict) or set(update) != set(shapes):
        return "update does not name the model's parameters"
    for name, value in update.items():
        if not isinstance(value, np.ndarray) or value.shape != shapes[name]:
            return f"update[{name}] is not an array of shape {shapes[name]}"
    if not isinstance(message["num_samples"], int) or message["num_samples"] < 0:
        return "num_samples is not a non-negative int"
    metrics = message["metrics"]
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and type(v) in (int, float)
                                                for k, v in metrics.items()):
        return "metrics are not scalars"
    return None


def proximal_term(params: list[torch.Tensor], anchor: list[torch.Tensor], mu: float):
    """FedProx: add the gradient of mu/2 ||theta - anchor||^2, mu (theta - anchor), to the gradients."""
    def add(grads: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for g, p, a in zip(grads, params, anchor, strict=True):
                g.add_(p - a, alpha=mu)
    return add


@ray.remote
class FederatedClient:
    def __init__(self, cfg: Config, info: EnvInfo, index: int, num_clients: int, seed: int, cpus: float):
        set_worker_threads(cpus, cfg.train.torch_threads)
        self.cfg, self.index = cfg, index
        self.replica = Replica(cfg, info, index, num_clients, seed)
        self.replica.learner.owns_target = False   # the server keeps the target network
        self.held = WeightsHolder()
        self.rng = np.random.default_rng(seed + 99)
        self.poisoned = index in cfg.federated.poisoned_clients

    def train_round(self, box: WeightsBox, num_updates: int) -> dict[str, Any]:
        """Start from the global weights, collect and train ``num_updates`` local updates, and
        return the ClientMessage: the update, the sample count, scalar metrics."""
        f = self.cfg.federated
        self.held.take(self.replica, box)
        learner = self.replica.learner
        start = learner.get_weights()
        learner.set_weights(start)   # a fresh start from the global model, as in FedAvg
        reduce = None
        if f.proximal_mu > 0:
            anchor = [learner.flat_params.detach().clone()]
            reduce = proximal_term([learner.flat_params], anchor, f.proximal_mu)
        done, sums = self.replica.train(num_updates, reduce_grads=reduce)
        update = aggregate.difference(learner.get_weights(), start)
        metrics: dict[str, float] = {"local_updates": done, **{k: v / max(done, 1) for k, v in sums.items()}}
        if f.dp_clip is not None:
            update, norm = aggregate.clip_by_norm(update, f.dp_clip)
            sigma = f.dp_noise_multiplier * f.dp_clip
            if sigma > 0:
                update = {k: (v + self.rng.normal(0.0, sigma, v.shape)).astype(v.dtype) for k, v in update.items()}
            metrics["update_norm"] = norm
        if self.poisoned:
            update = {k: np.where(self.rng.random(v.shape) < 0.5, np.nan, 1e6).astype(v.dtype)
                      for k, v in update.items()}
        # Held weights stay the global model's: the next round starts from the server's anyway.
        learner.set_weights(start)
        seen = self.replica.drain()
        returns = seen["episode_returns"]
        metrics.update(env_steps=int(seen["env_steps"]), episodes=len(returns),
                       episode_return_mean=float(returns.mean()) if len(returns) else float("nan"),
                       episode_length_mean=(float(seen["episode_lengths"].mean()) if len(returns)
                                            else float("nan")))
        return {"update": update, "num_samples": len(self.replica.replay),
                "metrics": {k: (int(v) if isinstance(v, int | np.integer) else float(v)) for k, v in metrics.items()}}

    def identity(self) -> dict[str, Any]:
        return process_identity(index=self.index)
