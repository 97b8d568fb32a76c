"""The federated server's step (Reddi et al. 2021, "Adaptive Federated Optimization"): the
aggregate of the clients' updates, Delta = aggregate_k (theta_k - theta), is treated as a
pseudo-gradient (a descent direction already: it points where the clients went) and the server
takes an optimiser's step along it:

    fedavg:   theta <- theta + lr * Delta                                  (lr 1: McMahan et al. 2017)
    fedavgm:  m <- beta1 m + Delta;             theta <- theta + lr * m    (Hsu et al. 2019)
    fedadam:  m <- beta1 m + (1 - beta1) Delta
              v <- beta2 v + (1 - beta2) Delta^2
              theta <- theta + lr * m / (sqrt(v) + tau)
    fedyogi:  as fedadam, with v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)

As in the paper: no bias correction, and ``tau`` (the "degree of adaptivity") bounds the step of a
coordinate whose clients barely moved; v starts at tau^2. ``step`` returns the change to add to
theta, so that the server applies it like any other delta. No Ray, no torch: NumPy on the dicts of
arrays that travel between processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")


class ServerOptimizer:
    def __init__(self, kind: str, lr: float = 1.0, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3):
        if kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"unknown server optimizer {kind!r} (one of {', '.join(SERVER_OPTIMIZERS)})")
        self.kind, self.lr, self.beta1, self.beta2, self.tau = kind, lr, beta1, beta2, tau
        self.m: dict[str, np.ndarray] = {}   # first moment (fedavgm: the momentum buffer)
        self.v: dict[str, np.ndarray] = {}   # second moment (fedadam, fedyogi)

    def step(self, delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The change to add to the global weights for the round's aggregate ``delta`` (in its dtypes)."""
        out = {}
        for k, d in delta.items():
            d64 = np.asarray(d, dtype=np.float64)
            out[k] = (self.lr * self._direction(k, d64)).astype(np.asarray(d).dtype)
        return out

    def _direction(self, k: str, d: np.ndarray) -> np.ndarray:
        if self.kind == "fedavg":
            return d
        m = self.m.get(k, np.zeros_like(d))
        if self.kind == "fedavgm":
            self.m[k] = self.beta1 * m + d
            return self.m[k]
        self.m[k] = self.beta1 * m + (1 - self.beta1) * d
        v, d2 = self.v.get(k, np.full_like(d, self.tau ** 2)), d * d
        if self.kind == "fedadam":
            self.v[k] = self.beta2 * v + (1 - self.beta2) * d2
        else:   # fedyogi: v moves toward Delta^2 by at most (1 - beta2) Delta^2 a round
            self.v[k] = v - (1 - self.beta2) * d2 * np.sign(v - d2)
        return self.m[k] / (np.sqrt(self.v[k]) + self.tau)

    # ---- checkpoints ----
    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "m": {k: v.copy() for k, v in self.m.items()},
                "v": {k: v.copy() for k, v in self.v.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"the checkpoint's server optimizer is {state['kind']}, not {self.kind}")
        self.m = {k: np.array(v, dtype=np.float64) for k, v in state["m"].items()}
        self.v = {k: np.array(v, dtype=np.float64) for k, v in state["v"].items()}
