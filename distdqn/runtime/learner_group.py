"""apex's group of data-parallel learners (apex.num_learners) on runtime/group.py: each learner
is a full replica and a GroupMember averaging every update's clipped gradient, so that they stay
identical; beside the average they need one more exchange, ``Agreement``: the leader's word to
the others on whether to sample at all (learner 0 judges the replay ratio over every shard,
runtime/shards.py, and the others follow it, so that every learner makes the same updates).

On one host the word travels through a one-float shared-memory segment beside the group's (the
same exchange, runtime/collectives.py); across hosts as a broadcast on the group's
torch.distributed process group. Every exchange waits at most the group's timeout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from distdqn.runtime import group
from distdqn.runtime.collectives import SharedMemoryAllReduce, unlink

AGREEMENT_SUFFIX = "-agree"


class Agreement:
    """A member's side: ``agree(flag)`` is rank 0's ``flag`` on every member. Made in
    ``join_group``, after the member's Averager (rank 0 first: it creates the segment)."""

    def __init__(self, spec: group.GroupSpec, rank: int):
        self.rank, self.world_size = rank, spec.world_size
        self._exchange: SharedMemoryAllReduce | None = None
        if spec.backend == "shm":
            self._exchange = SharedMemoryAllReduce(spec.segment + AGREEMENT_SUFFIX, rank, spec.world_size, 1,
                                                   rank == 0, spec.timeout_s)
        else:   # the Averager has initialized the process group
            self._flag = torch.zeros(1, device="cuda" if spec.backend == "nccl" else "cpu")

    def agree(self, flag: bool) -> bool:
        if self._exchange is not None:   # a mean of [world * flag, 0, ...] is rank 0's flag
            vector = np.array([float(flag) * self.world_size if self.rank == 0 else 0.0], dtype=np.float32)
            self._exchange.mean_(vector)
            return bool(vector[0] > 0.5)
        self._flag.fill_(float(flag))
        dist.broadcast(self._flag, src=0)
        return bool(self._flag.item() > 0.5)

    def close(self) -> None:
        if self._exchange is not None:
            self._exchange.close()
            self._exchange = None


def remove(spec: group.GroupSpec | None) -> None:
    """The group's shared memory (and the agreement's), if a learner that died could not remove it."""
    if spec is not None and spec.backend == "shm":
        group.remove(spec)
        unlink(spec.segment + AGREEMENT_SUFFIX)
