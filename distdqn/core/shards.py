"""A replay split into shards, sampled as if it were one replay (apex.replay_shards).

One PrioritizedReplay draws a batch stratified: one draw from each of ``batch_size`` segments of
equal mass of its total priority T, segment j's target t_j = (j + u_j) T / B with u_j uniform in
[0, 1). Laid end to end, shards k = 0 .. K-1 of masses M_k form one such total: a target falls in
the shard whose range [M_0 + ... + M_(k-1), M_0 + ... + M_k) holds it, and that shard finds it at
its own offset, a fraction of its own mass. The draws thus split across shards in proportion to
their priority mass, and the combined batch has exactly the distribution of one replay holding
the same transitions and priorities: P(i) = p_i^alpha / T for each draw, the same strata.

Importance weights as one replay's: w_i = (N P(i))^-beta / max_j w_j = (p_i^alpha / min_k p_k^alpha)^-beta,
the minimum taken over every shard.

A group of L learners shares each batch: learner r draws the segments j = r, r + L, r + 2L, ...
(``batch_size / L`` of them, with its own u_j), so the group's draws for one update are again one
replay's stratified batch. A uniform replay is the special case of equal priorities: its mass is
its size, each leaf 1, every weight 1.

Indices travel as global slots, ``shard * capacity + position``: priorities go back to the shard
a transition came from.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from distdqn.core.transitions import Batch


def stratified_fractions(rng: np.random.Generator, num_batches: int, batch_size: int,
                         rank: int = 0, world: int = 1) -> np.ndarray:
    """[num_batches, batch_size / world] targets as fractions of the total mass, in [0, 1): the
    segments j = rank, rank + world, ... of each batch, one uniform draw within each."""
    if batch_size % world:
        raise ValueError(f"{world} learners cannot share a batch of {batch_size} equally")
    segments = np.arange(rank, batch_size, world, dtype=np.float64)
    return (segments + rng.random((num_batches, len(segments)))) / batch_size


def split_by_mass(fractions: np.ndarray, masses: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each shard k: the flat positions of ``fractions`` (of the total mass) that fall in its
    range, and where within its own mass they fall (fractions of M_k, in [0, 1))."""
    masses = np.asarray(masses, dtype=np.float64)
    ends = np.cumsum(masses)
    total = ends[-1]
    if total <= 0:
        raise ValueError("cannot sample from shards that hold no transitions")
    targets = fractions.reshape(-1) * total
    owner = np.minimum(np.searchsorted(ends, targets, side="right"), len(masses) - 1)
    starts = ends - masses
    out = []
    for k, mass in enumerate(masses):
        positions = np.flatnonzero(owner == k)
        local = (targets[positions] - starts[k]) / mass if mass > 0 else np.zeros(0)
        out.append((positions, np.clip(local, 0.0, np.nextafter(1.0, 0.0))))
    return out


def importance_weights(leaves: np.ndarray, min_leaf: float, beta: float) -> np.ndarray:
    """(p_i / p_min)^-beta, with p the stored (scaled) priorities: one replay's normalized weights."""
    return np.power(np.asarray(leaves, dtype=np.float64) / min_leaf, -beta).astype(np.float32)


def combine(parts: list[tuple[np.ndarray, Batch, np.ndarray]], num_draws: int, capacity: int,
            min_leaf: float, beta: float) -> Batch:
    """One Batch in draw order from each shard's (positions, batch, leaves): the shards' draws put
    back where their targets were, indices made global slots, weights normalized over all shards."""
    order = np.concatenate([positions for positions, _, _ in parts])
    inverse = np.empty(num_draws, dtype=np.int64)
    inverse[order] = np.arange(num_draws)
    present = [(k, batch) for k, (positions, batch, _) in enumerate(parts) if len(positions)]
    columns = {}
    for f in fields(Batch):
        if f.name in ("indices", "weights"):
            continue
        columns[f.name] = np.concatenate([getattr(batch, f.name) for _, batch in present])[inverse]
    slots = np.concatenate([np.asarray(batch.indices, dtype=np.int64) + k * capacity for k, batch in present])
    leaves = np.concatenate([leaves for positions, _, leaves in parts if len(positions)])
    return Batch(**columns, indices=slots[inverse], weights=importance_weights(leaves[inverse], min_leaf, beta))


def route(slots: np.ndarray, values: np.ndarray, capacity: int, num_shards: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Global slots and their values (new priorities) as (positions, values) per shard."""
    slots = np.asarray(slots, dtype=np.int64)
    shard = slots // capacity
    return [(slots[shard == k] % capacity, np.asarray(values)[shard == k]) for k in range(num_shards)]
