"""apex's group of data-parallel learners (apex.num_learners) on runtime/group.py: each learner
is a full replica and a GroupMember averaging every update's clipped gradient, so that they stay
identical; beside the average they need one more exchange, ``Agreement``: the leader's word to
the others on whether to sample at all (learner 0 judges the replay ratio over every shard,
runtime/shards.py, and the others follow it, so that every learner makes the same updates).

The word travels as the group's gradients do, in a one-float exchange of its own: on one host a
shared-memory segment beside the group's (runtime/collectives.py); with the hierarchical backend
each host's members meet their leader in shared memory and the leaders sum over the group's
torch.distributed process group; with a flat gloo / nccl group, a broadcast on it. Every exchange
waits at most the group's timeout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from distdqn.runtime import group
from distdqn.runtime.collectives import HostReduce, SharedMemoryAllReduce, unlink

AGREEMENT_SUFFIX = "-agree"


class Agreement:
    """A member's side: ``agree(flag)`` is rank 0's ``flag`` on every member. Made in
    ``join_group``, after the member's Averager (rank 0 first: it creates the segment)."""

    def __init__(self, spec: group.GroupSpec, rank: int):
        self.rank, self.world_size, self.hosts = rank, spec.world_size, spec.hosts
        self._exchange: SharedMemoryAllReduce | None = None
        self._host: HostReduce | None = None
        if spec.backend == "shm":
            self._exchange = SharedMemoryAllReduce(spec.segment + AGREEMENT_SUFFIX, rank, spec.world_size, 1,
                                                   rank == 0, spec.timeout_s)
        elif spec.backend == "hierarchical":   # the Averager has put the hosts' leaders in a process group
            host = spec.host_of[rank]
            local = [r for r, h in enumerate(spec.host_of) if h == host]
            self._host = group._attach_host(f"{spec.segment}{AGREEMENT_SUFFIX}-h{host}", local.index(rank), len(local),
                                            1, local[0] == rank, spec.timeout_s)
        else:   # the Averager has put every member in a process group
            self._flag = torch.zeros(1, device="cuda" if spec.backend == "nccl" else "cpu")

    def agree(self, flag: bool) -> bool:
        # a sum of [world * flag] from rank 0 and [0] from the others, over the world, is rank 0's flag
        vector = np.array([float(flag) * self.world_size if self.rank == 0 else 0.0], dtype=np.float32)
        if self._exchange is not None:
            self._exchange.mean_(vector)
        elif self._host is not None:
            self._host.reduce_(vector, self._combine)
        else:
            self._flag.fill_(float(flag))
            dist.broadcast(self._flag, src=0)
            return bool(self._flag.item() > 0.5)
        return bool(vector[0] > 0.5)

    def _combine(self, host_sum: np.ndarray) -> None:
        """A host's leader: the hosts' sums summed among the leaders, over the world."""
        total = torch.from_numpy(host_sum)
        if self.hosts > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        total /= self.world_size

    def close(self) -> None:
        for exchange in (self._exchange, self._host):
            if exchange is not None:
                exchange.close()
        self._exchange = self._host = None


def remove(spec: group.GroupSpec | None) -> None:
    """The group's shared memory (and the agreement's), if a learner that died could not remove it."""
    if spec is None:
        return
    group.remove(spec)
    if spec.backend == "shm":
        unlink(spec.segment + AGREEMENT_SUFFIX)
    elif spec.backend == "hierarchical":
        for host in set(spec.host_of):
            unlink(f"{spec.segment}{AGREEMENT_SUFFIX}-h{host}")
