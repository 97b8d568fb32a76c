"""What every role's process does about itself on the cluster: its torch threads, its identity
for processes.json, and keeping off the cores apex's learner took (CPU affinity, local/affinity.py)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ray
import torch

from distdqn.local import affinity


def set_worker_threads(cpus: float, override: int | None = None) -> None:
    """Torch threads for this process: ``override`` (train.torch_threads) or its CPU share."""
    torch.set_num_threads(override or max(1, int(cpus) or 1))


def process_identity(**extra: Any) -> dict[str, Any]:
    """Which process and node this is, and the CPUs it may run on (for processes.json)."""
    cpus = affinity.allowed_cpus()
    return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
            "cpus": sorted(cpus) if cpus is not None else None, **extra}


ISOLATION_TIMEOUT_S = 120.0   # for the learners to take their cores (they start first)


@dataclass(frozen=True)
class Isolation:
    """The cores one of apex's learners took for its training thread (``LearnerWorker.isolate``)."""

    node_id: str
    pid: int
    cpus: tuple[int, ...]


def claim_cores(num_cpus: int, block: int = 0, blocks: int = 1) -> Isolation | None:
    """Block ``block`` of the last ``blocks`` blocks of ``num_cpus`` CPUs of this node for the
    calling thread (one block per learner on the node, the first learner's last); this process's
    other threads keep off every block. None: the blocks would leave no CPU for the rest."""
    cpus = affinity.claim_last(num_cpus, block, blocks)
    if cpus is None:
        return None
    return Isolation(ray.get_runtime_context().get_node_id(), os.getpid(), tuple(cpus))


def _taken_here(isolations: Iterable[Isolation | None]) -> list[Isolation]:
    node = ray.get_runtime_context().get_node_id()
    return [i for i in isolations if i is not None and i.node_id == node]


def resolve(isolations: Iterable[Any]) -> list[Isolation]:
    """The learners' isolations, from the references the driver passed on (None: not isolated)."""
    refs = [i for i in isolations if i is not None]
    return [i for i in ray.get(refs, timeout=ISOLATION_TIMEOUT_S) if i is not None] if refs else []


def keep_off(isolations: Iterable[Isolation | None]) -> set[int] | None:
    """On a node where learners took cores, run on every CPU this process may use except theirs;
    returns those CPUs (None: no learner's cores here, or nothing left to run on)."""
    taken = _taken_here(isolations)
    if not taken:
        return None
    rest = (affinity.allowed_cpus() or set()) - {cpu for i in taken for cpu in i.cpus}
    if not rest:
        return None
    affinity.pin(rest)
    return rest


def keep_driver_off(isolations: Iterable[Isolation | None], started_here: bool) -> set[int] | None:
    """``keep_off`` for the driver, and for the Ray instance it started (its daemons and idle
    workers: every process below the driver but the learners'). Returns the driver's CPUs
    before, to restore when the run ends (None: nothing was changed)."""
    isolations = list(isolations)
    before = affinity.allowed_cpus()
    rest = keep_off(isolations)
    if rest is None:
        return None
    learners = {i.pid for i in _taken_here(isolations)}
    for pid in affinity.descendants(os.getpid()) if started_here else []:
        if pid not in learners:
            affinity.pin(rest, pid)
    return before
