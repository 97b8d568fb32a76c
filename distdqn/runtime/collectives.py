"""An all-reduce (mean) for ranks on one node, through POSIX shared memory instead of sockets.

Each rank owns one slot of a shared array; a step is: write my vector into my slot, publish my
step number, wait until every rank has published it, sum the slots in rank order, divide. Two sets
of slots alternate by step parity, so a rank that is a step ahead never overwrites what a slower
rank is still reading (to reach step s + 2 it must have seen every rank publish s + 1, which each
does only after reading step s). One wait per step, no locks; every rank computes the same sum in
the same order, so replicas stay identical bit for bit.

It needs no sockets, so a small gradient costs a copy and a wake-up rather than a round trip
through the network stack (benchmarks/RESULTS.md, "Data-parallel topologies", measures both).
Ranks on other hosts meet through torch.distributed instead (runtime/group.py). The ordering
argument relies on stores becoming visible in program order (x86's TSO; numpy writes the slot
before the step number).
"""

from __future__ import annotations

import os
import time
from multiprocessing import resource_tracker, shared_memory

import numpy as np

_PAD = 8   # int64 step counters one cache line apart


class SharedMemoryAllReduce:
    def __init__(self, name: str, rank: int, world_size: int, size: int, create: bool, timeout_s: float):
        """``size`` float32 per rank; rank 0 ``create``s the segment, the others attach to it."""
        self.rank, self.world_size, self.size, self.timeout_s = rank, world_size, size, timeout_s
        header = world_size * _PAD * 8
        nbytes = header + 2 * world_size * size * 4
        self._shm = open_segment(name, nbytes, create)
        self.created = create
        self._steps = np.ndarray((world_size, _PAD), dtype=np.int64, buffer=self._shm.buf)
        self._slots = np.ndarray((2, world_size, size), dtype=np.float32, buffer=self._shm.buf, offset=header)
        if create:
            self._steps[:] = 0
        self.step = int(self._steps[rank, 0])
        self.wait_s = 0.0   # spent waiting for the other ranks

    def mean_(self, vector: np.ndarray) -> None:
        """Replace ``vector`` (float32, ``size``) in place by its mean over the ranks."""
        self.step += 1
        slots = self._slots[self.step % 2]
        slots[self.rank] = vector
        self._steps[self.rank, 0] = self.step
        start = time.perf_counter()
        while self._steps[:, 0].min() < self.step:
            os.sched_yield()   # with more ranks than cores, let the others run
            if time.perf_counter() - start > self.timeout_s:
                raise TimeoutError(f"all-reduce: rank(s) {np.flatnonzero(self._steps[:, 0] < self.step).tolist()} "
                                   f"did not reach step {self.step} within {self.timeout_s:.0f} s")
        self.wait_s += time.perf_counter() - start
        np.add.reduce(slots, axis=0, out=vector)
        vector /= self.world_size

    def close(self) -> None:
        """Detach; the creator also removes the segment."""
        del self._steps, self._slots
        close_segment(self._shm, self.created)


class HostReduce:
    """The host's part of a hierarchical all-reduce: the host's ranks hand their vectors to its
    leader (local rank 0) through shared memory; the leader sums them in rank order, combines the
    sum with the other hosts' (``combine``: an all-reduce among one leader per host) and shares
    the result back through shared memory. Every rank ends with the leader's bits.

    Slots and results alternate by step parity, as in SharedMemoryAllReduce: a rank writes its
    slot for step s + 2 only after reading result s + 1, which the leader shares only after it has
    read every slot of step s + 1 (and so of s); the leader overwrites result s only at step
    s + 2, after every rank has written its slot for s + 2, which each does only after reading
    result s + 1."""

    _STEP, _RESULT = 0, 1

    def __init__(self, name: str, local_rank: int, local_size: int, size: int, create: bool, timeout_s: float):
        self.local_rank, self.local_size, self.size, self.timeout_s = local_rank, local_size, size, timeout_s
        header = (local_size + 1) * _PAD * 8
        self._shm = open_segment(name, header + 2 * (local_size + 1) * size * 4, create)
        self.created = create
        self._steps = np.ndarray((local_size + 1, _PAD), dtype=np.int64, buffer=self._shm.buf)   # + the result's
        self._slots = np.ndarray((2, local_size + 1, size), dtype=np.float32, buffer=self._shm.buf, offset=header)
        if create:
            self._steps[:] = 0
        self.step = int(self._steps[local_rank, 0])
        self.wait_s = 0.0

    def _wait(self, ready, who) -> None:
        start = time.perf_counter()
        while not ready():
            os.sched_yield()
            if time.perf_counter() - start > self.timeout_s:
                raise TimeoutError(f"all-reduce: {who()} did not reach step {self.step} within {self.timeout_s:.0f} s")
        self.wait_s += time.perf_counter() - start

    def reduce_(self, vector: np.ndarray, combine) -> None:
        """Replace ``vector`` in place by ``combine(the host's sum)`` (the leader computes it)."""
        self.step += 1
        slots, n = self._slots[self.step % 2], self.local_size
        slots[self.local_rank] = vector
        self._steps[self.local_rank, 0] = self.step
        if self.local_rank == 0:
            self._wait(lambda: self._steps[:n, 0].min() >= self.step,
                       lambda: f"local rank(s) {np.flatnonzero(self._steps[:n, 0] < self.step).tolist()}")
            np.add.reduce(slots[:n], axis=0, out=vector)
            combine(vector)
            slots[n] = vector
            self._steps[n, 0] = self.step
        else:
            self._wait(lambda: self._steps[n, 0] >= self.step, lambda: "the host's leader")
            vector[:] = slots[n]

    def close(self) -> None:
        del self._steps, self._slots
        close_segment(self._shm, self.created)


def open_segment(name: str, size: int, create: bool) -> shared_memory.SharedMemory:
    """Make (``create``) or attach to the shared-memory segment ``name``, of ``size`` bytes."""
    segment = shared_memory.SharedMemory(name=name, create=create, size=size if create else 0)
    if not create:   # Python < 3.13 would unlink an attached segment when this process exits
        resource_tracker.unregister(segment._name, "shared_memory")
    return segment


def close_segment(segment: shared_memory.SharedMemory, created: bool) -> None:
    """Detach; the creator also removes the segment."""
    segment.close()
    if created:
        try:
            segment.unlink()
        except FileNotFoundError:
            pass


def unlink(name: str) -> None:
    """Remove the segment ``name`` if it still exists (a run that ended on an error)."""
    try:
        shm = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    shm.close()
    shm.unlink()
