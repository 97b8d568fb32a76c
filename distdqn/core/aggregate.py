"""Combining the updates of several workers or clients: the arithmetic of the parameter servers and
of federated averaging, on the dicts of NumPy arrays that travel between processes.

    mean_of(updates, weights)        sum_k w_k * u_k / sum_k w_k          (gradient / model averaging, FedAvg)
    median_of(updates)               coordinate-wise median               (robust aggregation)
    trimmed_mean_of(updates, beta)   coordinate-wise mean without the beta largest and beta smallest
    difference(a, b), add_scaled(a, d, s)   a - b, a + s * d
    aggregate(method, updates, counts, trim)   one of the three above, by name (the server's step)
    clip_by_norm(update, max_norm)   the whole update scaled to global L2 norm <= max_norm
    privatize(update, clip, noise_multiplier, rng)   clip, then Gaussian noise of std
                                     noise_multiplier * clip (differential privacy, per update)
    proximal_gradient(grads, params, anchor, mu)   grads + mu (params - anchor)   (FedProx)
    is_finite(update)                no NaN or infinity anywhere
    mean_pairwise_cosine(updates)    how alike the updates point (client drift)

No Ray, no torch: the same functions serve every topology and are tested against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Arrays = Mapping[str, np.ndarray]


def _stack(updates: Sequence[Arrays], key: str) -> np.ndarray:
    return np.stack([np.asarray(u[key], dtype=np.float64) for u in updates])


def _check(updates: Sequence[Arrays]) -> None:
    if not updates:
        raise ValueError("nothing to aggregate: no updates")
    keys = set(updates[0])
    for u in updates[1:]:
        if set(u) != keys:
            raise ValueError(f"updates with different parameters: {sorted(keys ^ set(u))}")


def mean_of(updates: Sequence[Arrays], weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """The (weighted) mean, parameter by parameter, in the dtype of the first update."""
    _check(updates)
    w = np.ones(len(updates)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(updates),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(updates)} non-negative numbers, not all zero")
    w = w / w.sum()
    if len(updates) == 1:   # exact: no arithmetic on a lone update
        return {k: np.array(v, copy=True) for k, v in updates[0].items()}
    return {k: np.tensordot(w, _stack(updates, k), axes=1).astype(np.asarray(v).dtype)
            for k, v in updates[0].items()}


def median_of(updates: Sequence[Arrays]) -> dict[str, np.ndarray]:
    """Coordinate-wise median (NaN in a minority of updates does not reach the result)."""
    _check(updates)
    out = {}
    for k, v in updates[0].items():
        stacked = _stack(updates, k)
        stacked = np.where(np.isnan(stacked), np.inf, stacked)   # NaN sorts as +inf: it counts as an outlier
        out[k] = np.median(stacked, axis=0).astype(np.asarray(v).dtype)
    return out


def trimmed_mean_of(updates: Sequence[Arrays], trim: int) -> dict[str, np.ndarray]:
    """Coordinate-wise mean after dropping the ``trim`` largest and ``trim`` smallest values."""
    _check(updates)
    if 2 * trim >= len(updates):
        raise ValueError(f"cannot trim {trim} from each side of {len(updates)} updates")
    out = {}
    for k, v in updates[0].items():
        stacked = np.sort(np.where(np.isnan(_stack(updates, k)), np.inf, _stack(updates, k)), axis=0)
        out[k] = stacked[trim:len(updates) - trim].mean(axis=0).astype(np.asarray(v).dtype)
    return out


AGGREGATORS = ("fedavg", "median", "trimmed_mean")


def aggregate(method: str, updates: Sequence[Arrays], counts: Sequence[int] | None = None,
              trim: int = 0) -> dict[str, np.ndarray]:
    """The server's combination of ``updates``: ``fedavg`` (weighted by ``counts`` when they are
    not all zero), coordinate-wise ``median``, or ``trimmed_mean`` (``trim`` from each side, at
    most what leaves one update: fewer updates than planned arrive when clients drop out)."""
    if method == "fedavg":
        return mean_of(updates, counts if counts is not None and sum(counts) > 0 else None)
    if method == "median":
        return median_of(updates)
    if method == "trimmed_mean":
        return trimmed_mean_of(updates, min(trim, (len(updates) - 1) // 2))
    raise ValueError(f"unknown aggregator {method!r} (one of {', '.join(AGGREGATORS)})")


def difference(a: Arrays, b: Arrays) -> dict[str, np.ndarray]:
    """a - b."""
    return {k: np.asarray(a[k]) - np.asarray(b[k]) for k in a}


def add_scaled(a: Arrays, delta: Arrays, scale: float = 1.0) -> dict[str, np.ndarray]:
    """a + scale * delta, in a's dtype."""
    return {k: (np.asarray(a[k]) + scale * np.asarray(delta[k])).astype(np.asarray(a[k]).dtype) for k in a}


def global_norm(update: Arrays) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(np.asarray(v, dtype=np.float64)))) for v in update.values())))


def clip_by_norm(update: Arrays, max_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """The update scaled so that its global L2 norm is at most ``max_norm``; also its norm before."""
    norm = global_norm(update)
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: (np.asarray(v) * scale).astype(np.asarray(v).dtype) for k, v in update.items()}, norm


def privatize(update: Arrays, clip: float, noise_multiplier: float,
              rng: np.random.Generator) -> tuple[dict[str, np.ndarray], float]:
    """``update`` clipped to global L2 norm ``clip``, plus Gaussian noise of standard deviation
    ``noise_multiplier * clip`` on every coordinate (the Gaussian mechanism on one update); also
    the norm before clipping."""
    clipped, norm = clip_by_norm(update, clip)
    sigma = noise_multiplier * clip
    if sigma > 0:
        clipped = {k: (v + rng.normal(0.0, sigma, v.shape)).astype(v.dtype) for k, v in clipped.items()}
    return clipped, norm


def proximal_gradient(grads: np.ndarray, params: np.ndarray, anchor: np.ndarray, mu: float) -> np.ndarray:
    """FedProx (Li et al. 2020): the gradient of loss + mu/2 ||theta - anchor||^2, that is
    grads + mu (params - anchor), on flat vectors (the learner's layout)."""
    return (grads + mu * (params - anchor)).astype(grads.dtype)


def is_finite(update: Arrays) -> bool:
    return all(np.all(np.isfinite(v)) for v in update.values())


def mean_pairwise_cosine(updates: Sequence[Arrays]) -> float:
    """The mean cosine similarity over pairs of updates, each flattened whole (1: all point the
    same way; near 0: the clients drift apart). Needs two updates or more."""
    _check(updates)
    if len(updates) < 2:
        raise ValueError("a pairwise cosine needs two updates or more")
    flat = np.stack([np.concatenate([np.asarray(u[k], dtype=np.float64).ravel() for k in sorted(u)])
                     for u in updates])
    norms = np.linalg.norm(flat, axis=1)
    unit = flat / np.where(norms > 0, norms, 1.0)[:, None]
    cos = unit @ unit.T
    n = len(updates)
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))
