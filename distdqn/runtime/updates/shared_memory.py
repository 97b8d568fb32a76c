"""The shared-memory path of the update channel's loops (runtime/updates/loops.py): workers on
the server's host meet it in one POSIX shared-memory segment, with no Ray call and no socket per
update.

    server (Segment, created)                 segment                      worker i (Segment, attached)
    publish(theta, target) ---> weights[n % 2], version, target version ---> latest(): copy
    poll(): read, release   <--------------- slot i: a flat gradient  <--- push(g, based_on, k)
                                              (or model) + counters

Weights: two buffers alternate by publication number n. The server announces ``begun = n`` before
it writes buffer n % 2 and ``published = n`` after; a reader copies buffer p % 2 of the newest
publication p and keeps the copy only if ``begun`` is still below p + 2 (a seqlock: the server
cannot have started overwriting that buffer). Slots: worker i writes its slot only when the
server has released the previous push (``consumed == pushed``), then counts the push; the server
reads a slot only when ``pushed > consumed``, then releases it. One writer per field, no locks.
A round trip is two copies of the parameters and the wake-ups. Like runtime/collectives.py it
relies on stores becoming visible in program order (x86's TSO; NumPy writes the data before the
counter that announces it).
"""

from __future__ import annotations

import time
import uuid
from multiprocessing import shared_memory

import numpy as np
import ray

from distdqn.runtime.collectives import close_segment, open_segment
from distdqn.runtime.updates.waiting import spin_until

_PAD = 8                                            # int64 fields one cache line apart
BEGUN, PUBLISHED, COLLECT, STOP = range(4)          # server fields
VERSION, TARGET_VERSION = range(2)                  # per weights buffer
PUSHED, CONSUMED, BASED_ON, ROUND, NUM_UPDATES, ENV_STEPS = range(6)   # per worker


class Segment:
    """Both sides of the segment: the server's (``create``) and a worker's (attached). On the
    server's side it is an ``Endpoint`` of the loops (runtime/updates/loops.py)."""

    path = "shm"

    @classmethod
    def create(cls, num_workers: int, num_params: int) -> Segment:
        return cls(f"distdqn-ps-{uuid.uuid4().hex[:16]}", num_workers, num_params, create=True)

    def __init__(self, name: str, num_workers: int, num_params: int, create: bool):
        self.name = name
        """``num_params`` float32 per weights vector and per slot; the server ``create``s the
        segment, workers attach to it."""
        self.num_workers, self.num_params, self.created = num_workers, num_params, create
        sizes = [4 * _PAD * 8, 2 * _PAD * 8, num_workers * _PAD * 8, 2 * 2 * num_params * 4, num_workers * num_params * 4]
        self._shm = open_segment(name, sum(sizes), create)
        offsets = np.cumsum([0] + sizes)
        buf = self._shm.buf
        self._ctl = np.ndarray((4, _PAD), np.int64, buf, offsets[0])
        self._meta = np.ndarray((2, _PAD), np.int64, buf, offsets[1])
        self._workers = np.ndarray((num_workers, _PAD), np.int64, buf, offsets[2])
        self._weights = np.ndarray((2, 2, num_params), np.float32, buf, offsets[3])   # [buffer][online, target]
        self._slots = np.ndarray((num_workers, num_params), np.float32, buf, offsets[4])
        if create:
            self._ctl[:] = 0
            self._meta[:] = -1
            self._workers[:] = 0
            self._ctl[COLLECT, 0] = 1

    # ---- the server ----
    def attach_args(self, worker: int) -> tuple:
        """What worker ``worker``'s ``attach`` call takes to meet the server here."""
        return ("shm", self.name)

    def joined(self, worker: int, timeout_s: float) -> None:
        """Worker ``worker`` has attached (nothing to wait for: it opened the segment)."""

    def publish(self, online: np.ndarray, target: np.ndarray, version: int, target_version: int) -> None:
        """Make ``online`` (at ``version``) and ``target`` the newest weights."""
        n = int(self._ctl[PUBLISHED, 0]) + 1
        self._ctl[BEGUN, 0] = n
        b = n % 2
        self._weights[b, 0] = online
        if self._meta[b, TARGET_VERSION] != target_version:   # this buffer's target is older
            self._weights[b, 1] = target
        self._meta[b, VERSION], self._meta[b, TARGET_VERSION] = version, target_version
        self._ctl[PUBLISHED, 0] = n

    def ready(self, worker: int) -> bool:
        """Worker ``worker`` has pushed something the server has not taken."""
        return self._workers[worker, PUSHED] > self._workers[worker, CONSUMED]

    def round_of(self, worker: int) -> int:
        """The publication worker ``worker``'s waiting push was computed from."""
        return int(self._workers[worker, ROUND])

    def take(self, worker: int, into: np.ndarray) -> tuple[int, int]:
        """Copy worker ``worker``'s push ``into`` a vector and release its slot; returns
        (the version it was computed from, the learner updates it holds: 0 = no batch was owed)."""
        w = self._workers[worker]
        based_on, num_updates = int(w[BASED_ON]), int(w[NUM_UPDATES])
        into[:] = self._slots[worker]
        w[CONSUMED] = w[PUSHED]
        return based_on, num_updates

    def drop(self, worker: int) -> None:
        """Release worker ``worker``'s slot unread (its push is too late, or it was replaced)."""
        self._workers[worker, CONSUMED] = self._workers[worker, PUSHED]

    def env_steps(self) -> int:
        """Env steps the workers have collected since the segment was made."""
        return int(self._workers[:, ENV_STEPS].sum())

    def allow_collect(self, allowed: bool) -> None:
        self._ctl[COLLECT, 0] = int(allowed)

    def stop(self) -> None:
        self._ctl[STOP, 0] = 1

    # ---- a worker ----
    @property
    def collecting(self) -> bool:
        return bool(self._ctl[COLLECT, 0])

    @property
    def stopped(self) -> bool:
        return bool(self._ctl[STOP, 0])

    @property
    def published(self) -> int:
        """Publications so far (0: none yet; each sync_ps round is one)."""
        return int(self._ctl[PUBLISHED, 0])

    def latest(self, online: np.ndarray, target: np.ndarray, held_target: int) -> tuple[int, int, int]:
        """Copy the newest weights into ``online`` (and ``target``, unless it is ``held_target``);
        returns their (publication, version, target version)."""
        while True:
            p = int(self._ctl[PUBLISHED, 0])
            b = p % 2
            version, target_version = int(self._meta[b, VERSION]), int(self._meta[b, TARGET_VERSION])
            online[:] = self._weights[b, 0]
            if target_version != held_target:
                target[:] = self._weights[b, 1]
            if self._ctl[BEGUN, 0] < p + 2:   # the server has not started overwriting buffer b
                return p, version, target_version

    def idle(self, wait_s: float) -> None:
        """Nothing to block on (the workers write the segment): yield the core a moment."""
        time.sleep(min(wait_s, 2e-5))

    def will_pull(self) -> None:
        """Nothing to ask: ``latest`` reads the segment."""

    def push(self, worker: int, vector: np.ndarray | None, based_on: tuple[int, int], num_updates: int,
             env_steps: int, timeout_s: float) -> None:
        """Write ``vector`` (None: no batch was owed), computed from the weights of ``based_on``
        (publication, version), to the slot once the server has taken the previous push, and
        count it; ``env_steps``: collected since the previous push."""
        w = self._workers[worker]
        if not spin_until(lambda: w[CONSUMED] == w[PUSHED], timeout_s, lambda: self.stopped):
            raise TimeoutError(f"worker {worker}: the server took no push within {timeout_s:.0f} s")
        if vector is not None:
            self._slots[worker] = vector
        w[ROUND], w[BASED_ON], w[NUM_UPDATES] = based_on[0], based_on[1], num_updates
        w[ENV_STEPS] += env_steps
        w[PUSHED] += 1

    def close(self) -> None:
        """Detach; the creator also removes the segment."""
        del self._ctl, self._meta, self._workers, self._weights, self._slots
        close_segment(self._shm, self.created)


def sharing_memory(handles: list, timeout_s: float) -> list[bool]:
    """For each worker, whether it can open a segment this process makes (it is on this host,
    sharing its /dev/shm: Ray nodes on one machine do, containers and hosts apart do not)."""
    probe = shared_memory.SharedMemory(name=f"distdqn-probe-{uuid.uuid4().hex[:16]}", create=True, size=8)
    try:
        return ray.get([h.opens_shared_memory.remote(probe.name) for h in handles], timeout=timeout_s)
    finally:
        probe.close()
        probe.unlink()
