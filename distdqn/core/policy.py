"""Action selection from Q-values: greedy and epsilon-greedy, over a whole vector of observations.

A policy holds a copy of the Q-network's weights (the dict of NumPy arrays that travels between
processes) and computes Q-values for a batch of observations. For MLPs the forward pass runs in
NumPy: for the handful of observations an actor holds, that is several times cheaper than a torch
module call, and actors step environments with it on every env step. Other networks use torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from distdqn.core.networks import InputEncoding, build_q_network, encode_numpy


class NumpyMLPPolicy:
    """Q-values of an ``MLPQNetwork`` computed with NumPy from its weights (its observations
    encoded as the network's ``encoding`` says, if it has one)."""

    def __init__(self, weights: Mapping[str, np.ndarray], dueling: bool, encoding: InputEncoding | None = None):
        self.dueling = dueling
        self.encoding = encoding
        self.set_weights(weights)

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        hidden = sorted({k.split(".")[1] for k in weights if k.startswith("hidden.")}, key=int)
        # Stored transposed and contiguous: x @ W^T as one matmul on a [in, out] array.
        self._hidden = [(np.ascontiguousarray(weights[f"hidden.{i}.weight"].T),
                         np.array(weights[f"hidden.{i}.bias"])) for i in hidden]
        if self.dueling:
            self._value = (np.ascontiguousarray(weights["head.value.weight"].T),
                           np.array(weights["head.value.bias"]))
            self._advantage = (np.ascontiguousarray(weights["head.advantage.weight"].T),
                               np.array(weights["head.advantage.bias"]))
        else:
            self._head = (np.ascontiguousarray(weights["head.weight"].T), np.array(weights["head.bias"]))

    def weights(self) -> dict[str, np.ndarray]:
        """A copy of the weights this policy acts with, keyed as the network's state dict."""
        out = {}
        for i, (w, b) in enumerate(self._hidden):
            out[f"hidden.{i}.weight"], out[f"hidden.{i}.bias"] = w.T.copy(), b.copy()
        heads = ({"head.value": self._value, "head.advantage": self._advantage} if self.dueling
                 else {"head": self._head})
        for name, (w, b) in heads.items():
            out[f"{name}.weight"], out[f"{name}.bias"] = w.T.copy(), b.copy()
        return out

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = (encode_numpy(self.encoding, obs) if self.encoding is not None
             else obs.reshape(len(obs), -1).astype(np.float32, copy=False))
        for w, b in self._hidden:
            x = x @ w
            x += b
            np.maximum(x, 0.0, out=x)
        if self.dueling:
            advantage = x @ self._advantage[0] + self._advantage[1]
            return (x @ self._value[0] + self._value[1]) + advantage - advantage.mean(1, keepdims=True)
        q = x @ self._head[0]
        q += self._head[1]
        return q


class TorchPolicy:
    """Q-values from a torch Q-network on the CPU (any architecture)."""

    def __init__(self, network: torch.nn.Module, weights: Mapping[str, np.ndarray] | None = None):
        self.network = network
        if weights is not None:
            self.set_weights(weights)

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.network.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})

    def weights(self) -> dict[str, np.ndarray]:
        """A copy of the weights this policy acts with, keyed as the network's state dict."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.network.state_dict().items()}

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.network(torch.as_tensor(obs)).numpy()


def make_policy(kind: str, obs_shape: tuple[int, ...], num_actions: int, hidden_sizes: list[int],
                dueling: bool, weights: Mapping[str, np.ndarray], atoms: int = 1,
                v_min: float = -10.0, v_max: float = 10.0, encoding: InputEncoding | None = None):
    """The fastest policy that computes exactly this network's Q-values (NumPy for an MLP with one
    value per action; torch for the rest, a categorical head included)."""
    if kind == "mlp" and atoms == 1:
        return NumpyMLPPolicy(weights, dueling, encoding)
    return TorchPolicy(build_q_network(kind, obs_shape, num_actions, hidden_sizes, dueling, atoms, v_min, v_max,
                                       encoding), weights)


def epsilon_greedy(q_values: np.ndarray, epsilon: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Greedy actions, each replaced by a uniform random one with probability epsilon (scalar or per row)."""
    num_rows, num_actions = q_values.shape
    actions = q_values.argmax(axis=1)
    explore = rng.random(num_rows) < epsilon
    if explore.any():
        actions = np.where(explore, rng.integers(0, num_actions, size=num_rows), actions)
    return actions


def initial_priorities(policy, obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
                       next_obs: np.ndarray, terminated: np.ndarray, discount: np.ndarray) -> np.ndarray:
    """|r + discount * (1 - terminated) * max_a Q(s', a) - Q(s, a)| with the actor's own network.

    Ape-X actors compute these for the transitions they send, so that new data enters the replay
    with a priority that reflects it instead of the running maximum.
    """
    q = policy.q_values(np.concatenate([obs, next_obs]))
    q_taken = q[np.arange(len(obs)), action]
    bootstrap = np.where(terminated, 0.0, discount * q[len(obs):].max(axis=1))
    return np.abs(reward + bootstrap - q_taken)
