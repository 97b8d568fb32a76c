"""Client-level differential privacy for federated averaging, and the accountant that says what it
buys as (epsilon, delta). The privacy unit is a client: everything it holds, over the whole run.

central  DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
         Models"): each round every client is sampled independently with probability q; the
         server clips each sampled client's update u_k to L2 norm S, sums them, adds Gaussian
         noise N(0, (z S)^2 I) to the sum and divides by the expected number of clients q N:
             Delta = (sum_k clip(u_k, S) + N(0, (z S)^2 I)) / (q N)
         Adding or removing a client moves the sum by at most S, so a round is the Poisson-
         subsampled Gaussian mechanism (q, z); T rounds compose. The server sees raw updates:
         it is trusted, and what it releases (the global model) is private.
local    Each client clips its own update to S and adds N(0, (z S)^2 I) before it leaves the
         client: the server is not trusted. Two datasets of one client can give clipped updates
         2S apart, so each release is a Gaussian mechanism with noise multiplier z / 2 relative to
         its sensitivity, with no amplification by sampling (the server knows who sent what);
         epsilon is the composition over the rounds of the client that took part most.

The accountant is Google's dp-accounting (Renyi DP, converted to (epsilon, delta) at the end).
No Ray, no files: NumPy and the accounting library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from dp_accounting import dp_event, rdp

from distdqn.core.aggregate import clip_by_norm

DP_MODES = ("off", "central", "local")

RDP_ORDERS = tuple(range(2, 64)) + (128, 256, 512, 1024)
"""Renyi orders the accountant minimises over: integers, for which the subsampled Gaussian's RDP
has an exact closed form. The library's default orders add fractional ones below 11, computed by a
series that can fail to converge (it then drops them, with a warning per order) and costs a few
times more; at the budgets worth reporting (epsilon <= 10) the two agree within about 1%
(tests/test_privacy.py)."""


def noised_mean(updates: Sequence[Mapping[str, np.ndarray]], clip: float, noise_multiplier: float,
                expected_clients: float, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], list[float]]:
    """Central DP-FedAvg's aggregate: (sum_k clip(u_k, S) + N(0, (z S)^2 I)) / (q N), with
    ``expected_clients`` = q N fixed in advance (a mean over the clients that came would reveal
    how many did); also each update's norm before clipping."""
    if not updates:
        raise ValueError("nothing to aggregate: no updates")
    clipped, norms = zip(*(clip_by_norm(u, clip) for u in updates), strict=True)
    sigma = noise_multiplier * clip
    out = {}
    for k, v in clipped[0].items():
        total = np.sum([np.asarray(c[k], dtype=np.float64) for c in clipped], axis=0)
        if sigma > 0:
            total = total + rng.normal(0.0, sigma, total.shape)
        out[k] = (total / expected_clients).astype(np.asarray(v).dtype)
    return out, list(norms)


def round_event(mode: str, noise_multiplier: float, sampling_rate: float) -> dp_event.DpEvent:
    """What one round releases about one client, as a dp-accounting event."""
    if mode == "central":
        return dp_event.PoissonSampledDpEvent(sampling_rate, dp_event.GaussianDpEvent(noise_multiplier))
    if mode == "local":
        return dp_event.GaussianDpEvent(noise_multiplier / 2)   # sensitivity 2S, noise z S
    raise ValueError(f"no privacy accounting for dp mode {mode!r}")


def epsilon_of(event: dp_event.DpEvent, count: int, delta: float) -> float:
    """epsilon of ``event`` composed ``count`` times, at ``delta`` (inf without noise)."""
    if count == 0:
        return 0.0
    accountant = rdp.RdpAccountant(list(RDP_ORDERS))
    accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


class PrivacyAccountant:
    """(epsilon, delta) spent so far. Central: every round counts for every client (each was
    sampled with probability q); local: each client's rounds count for it, the most is reported.
    Its state is two counts, kept in the run's counters (a resumed run goes on counting)."""

    def __init__(self, mode: str, noise_multiplier: float, sampling_rate: float, delta: float,
                 num_clients: int, rounds: int = 0, participations: Sequence[int] | None = None):
        self.event = round_event(mode, noise_multiplier, sampling_rate)
        self.mode, self.delta = mode, delta
        self.rounds = rounds
        self.participations = list(participations) if participations else [0] * num_clients
        self._cache: tuple[int, float] | None = None   # (count, epsilon)

    def record_round(self, clients: Sequence[int]) -> None:
        """A round was released; ``clients``: those whose update went into it (local mode)."""
        self.rounds += 1
        for i in clients:
            self.participations[i] += 1

    @property
    def count(self) -> int:
        """Compositions that bound the worst-off client."""
        return self.rounds if self.mode == "central" else max(self.participations, default=0)

    def epsilon(self) -> float:
        if self._cache is None or self._cache[0] != self.count:
            self._cache = (self.count, epsilon_of(self.event, self.count, self.delta))
        return self._cache[1]
