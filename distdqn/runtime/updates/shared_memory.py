"""The update channel through POSIX shared memory: every worker on the server's host runs its
own loop (``WorkerLoop``, in its PSWorker process) and meets the server in one segment, with no
Ray call per update; the server keeps two ``serve`` calls queued on each worker only to hear
their reports (episodes, update metrics, busy and wait times) and to notice one that dies.

    server (SharedMemoryChannel)              segment                      worker i (WorkerLoop)
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

import os
import time
import uuid
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import ray

from distdqn.core.learner import GradientLearner
from distdqn.core.records import Experience, UpdateStats
from distdqn.local.replica import Replica
from distdqn.runtime.collectives import close_segment, open_segment
from distdqn.runtime.messages import ServeReport
from distdqn.runtime.pool import RolePool
from distdqn.runtime.updates import Exchange, Push, WorkerDied, WorkerEvent, WorkerReport

_PAD = 8                                            # int64 fields one cache line apart
BEGUN, PUBLISHED, COLLECT, STOP = range(4)          # server fields
VERSION, TARGET_VERSION = range(2)                  # per weights buffer
PUSHED, CONSUMED, BASED_ON, ROUND, NUM_UPDATES, ENV_STEPS = range(6)   # per worker


class Stopped(Exception):
    """The server asked the workers to stop."""


def spin_until(ready, timeout_s: float, stop=None) -> bool:
    """Wait until ``ready()`` (True) or ``timeout_s`` has passed (False): spin, yielding, for the
    first 0.2 ms, then sleep 50 us at a time so that a waiting process leaves the cores to those
    working. Raises ``Stopped`` as soon as ``stop()``."""
    start = time.perf_counter()
    while not ready():
        if stop is not None and stop():
            raise Stopped
        waited = time.perf_counter() - start
        if waited > timeout_s:
            return False
        if waited < 2e-4:
            os.sched_yield()
        else:
            time.sleep(5e-5)
    return True


class Segment:
    def __init__(self, name: str, num_workers: int, num_params: int, create: bool):
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


class SharedMemoryChannel:
    """The server's side: the segment, the workers' loops started (``serve`` calls kept ``depth``
    deep on each) and their reports heard every 5 ms."""

    def __init__(self, pool: RolePool, exchange: Exchange, num_params: int, timeout_s: float,
                 chunk_s: float = 0.1, depth: int = 2):
        self.pool, self.exchange, self.timeout_s = pool, exchange, timeout_s
        self.serve_args = (chunk_s, timeout_s)
        self.depth = depth
        self.name = f"distdqn-ps-{uuid.uuid4().hex[:16]}"
        self.segment = Segment(self.name, pool.count, num_params, create=True)
        self.rows = np.empty((pool.count, num_params), dtype=np.float32)   # each worker's push taken
        self._calls: dict[Any, tuple[int, int]] = {}   # serve call -> (worker, its generation)
        self._events: list[WorkerEvent] = []
        self._published: tuple[int, int] = (-1, -1)    # (version, target version) last published
        self._target: tuple[int, np.ndarray | None] = (-1, None)   # (version, flat target) last flattened
        self._order = np.arange(pool.count)
        self._next_report = 0.0
        self._closing = False
        self._env_steps_at_close: int | None = None
        try:
            ray.get([h.attach.remote(self.name) for h in pool.handles], timeout=timeout_s)
        except BaseException:
            self.segment.close()
            raise
        for i in range(pool.count):
            self._queue(i)

    @property
    def publication(self) -> int:
        return self.segment.published

    @property
    def env_steps(self) -> int:
        if self._closing and self._env_steps_at_close is not None:
            return self._env_steps_at_close
        return self.segment.env_steps()   # counted as pushed: a worker that dies loses no pushed step

    def _queue(self, i: int) -> None:
        current = (i, self.pool.generations[i])
        while not self._closing and sum(call == current for call in self._calls.values()) < self.depth:
            self._calls[self.pool.handles[i].serve.remote(*self.serve_args)] = current

    def publish(self, learner: GradientLearner) -> None:
        """The online parameters straight from the learner's flat buffer (one copy, into the
        segment); the target flattened only when it changed. Asynchronously, unchanged weights
        are not published again (a round is a publication, changed or not)."""
        version = (learner.updates, learner.target_version)
        if not self.exchange.sync and version == self._published:
            return
        if self._target[0] != learner.target_version:
            self._target = (learner.target_version, learner.get_flat_weights()[1])
        self.segment.publish(learner.flat_params.numpy(), self._target[1], *version)
        self._published = version

    def allow_collect(self, allowed: bool) -> None:
        self.segment.allow_collect(allowed)

    def poll(self, wait_s: float) -> list[Push]:
        start = time.perf_counter()
        while True:
            pushes = []
            for i in self._order:
                if self.segment.ready(i):
                    publication = self.segment.round_of(i)
                    based_on, count = self.segment.take(i, self.rows[i])
                    pushes.append(Push(int(i), self.rows[i] if count else None, publication, based_on, count))
            self._order = np.roll(self._order, 1)   # no worker goes first every time
            self._hear_reports(force=False)
            if pushes or time.perf_counter() - start >= wait_s:
                return pushes
            time.sleep(2e-5)   # leave the core a moment

    def _hear_reports(self, force: bool) -> None:
        """Every 5 ms (or ``force``): the workers' finished serve calls as events; queue more."""
        now = time.perf_counter()
        if not force and now < self._next_report:
            return
        self._next_report = now + 0.005
        ready, _ = ray.wait(list(self._calls), num_returns=len(self._calls), timeout=0)
        for ref in ready:
            i, generation = self._calls.pop(ref)
            if generation != self.pool.generations[i]:
                continue
            report = self.pool.result(ref)
            if report is None:
                self._events.append(WorkerDied(i))
                continue
            self._events.append(WorkerReport(i, report.experience.episodes, report.updates, report.busy_s,
                                             report.wait_s))
            self._queue(i)

    def events(self) -> list[WorkerEvent]:
        self._hear_reports(force=False)
        events, self._events = self._events, []
        return events

    def replaced(self, worker: int) -> None:
        self.segment.drop(worker)
        self.pool.handles[worker].attach.remote(self.name)
        self._queue(worker)

    def close(self, drain: bool) -> list[WorkerEvent]:
        """Stop the workers' loops; ``drain``: hear their last reports and let them detach. The
        segment is removed either way."""
        self.segment.stop()
        self._closing = True
        try:
            if drain:
                refs = list(self._calls)
                ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
                self._hear_reports(force=True)
                ray.get([h.detach.remote() for h in self.pool.handles], timeout=self.timeout_s)
        finally:
            for ref in self._calls:
                ray.cancel(ref, force=False)
            self._calls.clear()
            self._env_steps_at_close = self.segment.env_steps()
            self.segment.close()
        events, self._events = self._events, []
        return events


class WorkerLoop:
    """A worker's side: its own loop of pushes, in its process, on the segment it attached to."""

    def __init__(self, name: str, replica: Replica, index: int, exchange: Exchange):
        learner = replica.learner
        self.segment = Segment(name, replica.num_replicas, learner.flat_params.numel(), create=False)
        self.replica, self.index, self.exchange = replica, index, exchange
        self._based_on = (0, -1)     # (publication, version) of the weights held
        self._target_version = -1
        self._target = np.empty(learner.flat_params.numel(), dtype=np.float32)
        self._since_pull = 0
        self._env_steps_pushed = replica.env_steps

    def serve(self, seconds: float, timeout_s: float) -> ServeReport:
        """Push gradients or models to the server for about ``seconds``: in a round (sync), each
        push from a newer publication than the last; else from the newest weights, taken every
        ``pull_period`` pushes."""
        segment, sync, report = self.segment, self.exchange.sync, ServeReport(UpdateStats(), Experience(), 0, 0.0, 0.0)
        start = time.perf_counter()
        end = start + seconds
        try:
            while time.perf_counter() < end:
                if sync or self._since_pull == 0:
                    waited = time.perf_counter()
                    if sync and not spin_until(lambda: segment.published > self._based_on[0], end - waited,
                                               lambda: segment.stopped):
                        report.wait_s += time.perf_counter() - waited
                        break
                    self._pull()
                    report.wait_s += time.perf_counter() - waited
                vector, count = self.replica.work(self.exchange.pushes_gradients, self.exchange.local_steps,
                                                  segment.collecting, report.updates)
                waited = time.perf_counter()
                steps, self._env_steps_pushed = self.replica.env_steps - self._env_steps_pushed, self.replica.env_steps
                segment.push(self.index, vector, self._based_on, count, steps, timeout_s)
                report.wait_s += time.perf_counter() - waited
                report.pushes += 1
                self._since_pull = (self._since_pull + 1) % self.exchange.pull_period
        except Stopped:
            pass
        report.experience = self.replica.report()
        report.busy_s = time.perf_counter() - start - report.wait_s
        return report

    def _pull(self) -> None:
        """Take the newest weights the server published (the target network only when it changed)."""
        learner = self.replica.learner
        publication, version, target_version = self.segment.latest(learner.flat_params.numpy(), self._target,
                                                                    self._target_version)
        if target_version != self._target_version:
            learner.set_flat_weights(None, self._target)
            self._target_version = target_version
        self._based_on = (publication, version)

    def close(self) -> None:
        self.segment.close()


def shares_memory(pool: RolePool, timeout_s: float) -> bool:
    """Whether every worker of ``pool`` can open a segment this process makes (they are on its
    host, sharing its /dev/shm: Ray nodes on one machine do, containers and hosts apart do not)."""
    probe = shared_memory.SharedMemory(name=f"distdqn-probe-{uuid.uuid4().hex[:16]}", create=True, size=8)
    try:
        return all(ray.get([h.opens_shared_memory.remote(probe.name) for h in pool.handles], timeout=timeout_s))
    finally:
        probe.close()
        probe.unlink()
