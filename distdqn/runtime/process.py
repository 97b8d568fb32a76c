"""What every role's process does about itself on the cluster: its torch threads, its identity
for processes.json, and keeping off the cores apex's learner took (CPU affinity, local/affinity.py)."""

from __future__ import annotations

import os
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


Isolation = dict[str, Any]
"""The cores apex's learner took for itself: {"node_id", "pid", "cpus"} (``LearnerWorker.isolate``)."""


def claim_cores(num_cpus: int) -> Isolation | None:
    """The last ``num_cpus`` CPUs of this node for the calling thread; None: none to spare."""
    cpus = affinity.claim_last(num_cpus)
    if cpus is None:
        return None
    return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "cpus": cpus}


def keep_off(isolation: Isolation | None) -> set[int] | None:
    """On the learner's node, run on every CPU this process may use except the learner's; returns
    those CPUs (None: not on the learner's node, or nothing left to run on)."""
    if isolation is None or isolation["node_id"] != ray.get_runtime_context().get_node_id():
        return None
    rest = (affinity.allowed_cpus() or set()) - set(isolation["cpus"])
    if not rest:
        return None
    affinity.pin(rest)
    return rest


def keep_driver_off(isolation: Isolation | None, started_here: bool) -> set[int] | None:
    """``keep_off`` for the driver, and for the Ray instance it started (its daemons and idle
    workers: every process below the driver but the learner's). Returns the driver's CPUs
    before, to restore when the run ends (None: nothing was changed)."""
    before = affinity.allowed_cpus()
    rest = keep_off(isolation)
    if rest is None:
        return None
    for pid in affinity.descendants(os.getpid()) if started_here else []:
        if pid != isolation["pid"]:
            affinity.pin(rest, pid)
    return before
