"""The update channel's loops: every worker runs its own loop of pushes (``WorkerLoop``, in its
PSWorker process) and meets the server on a path of its own, the cheapest that reaches it:

    shm   the server's host: one shared-memory segment (shared_memory.py), no socket
    tcp   another host: a socket to the server (tcp.py), one message per push and per pull

    server (LoopChannel)                        path (an Endpoint)                worker i
      publish(theta, target)  --- the newest weights, numbered (publication) --->  latest()
      poll(): ready(i), take(i)  <--- a flat gradient or model, its counters ---   push()

No Ray call is on the update path: the server keeps two short ``serve`` calls queued on each
worker only to hear its reports (episodes, update metrics, busy and wait times) and to notice
one that dies. A replaced worker is probed again and may take another path.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import ray

from distdqn.core.learner import GradientLearner
from distdqn.core.records import Experience, UpdateStats
from distdqn.local.replica import Replica
from distdqn.runtime.messages import ServeReport
from distdqn.runtime.pool import RolePool
from distdqn.runtime.updates import Exchange, Push, WorkerDied, WorkerEvent, WorkerReport
from distdqn.runtime.updates.waiting import Stopped, spin_until


class Endpoint(Protocol):
    """The server's side of one path, for the workers on it (indexed as in the pool)."""

    path: str

    @property
    def published(self) -> int: ...
    def attach_args(self, worker: int) -> tuple: ...
    def joined(self, worker: int, timeout_s: float) -> None: ...
    def publish(self, online: np.ndarray, target: np.ndarray, version: int, target_version: int) -> None: ...
    def ready(self, worker: int) -> bool: ...
    def round_of(self, worker: int) -> int: ...
    def take(self, worker: int, into: np.ndarray) -> tuple[int, int]: ...
    def drop(self, worker: int) -> None: ...
    def env_steps(self) -> int: ...
    def allow_collect(self, allowed: bool) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def idle(self, wait_s: float) -> None:
        """Wait up to ``wait_s`` for a worker's message (a path with file descriptors blocks on
        them; shared memory has none, and only yields the core a moment)."""


class WorkerEnd(Protocol):
    """A worker's side of its path."""

    @property
    def collecting(self) -> bool: ...
    @property
    def stopped(self) -> bool: ...
    @property
    def published(self) -> int: ...
    def latest(self, online: np.ndarray, target: np.ndarray, held_target: int) -> tuple[int, int, int]: ...
    def push(self, worker: int, vector: np.ndarray | None, based_on: tuple[int, int], num_updates: int,
             env_steps: int, timeout_s: float) -> None: ...
    def will_pull(self) -> None:
        """The worker's next call is ``latest``: a path with latency asks for the weights now, so
        that they travel while the worker computes (shared memory has nothing to ask)."""
    def close(self) -> None: ...


class LoopChannel:
    """The server's side: each worker's path (``paths``, by worker: "shm" or "tcp"), their loops
    started (``serve`` calls kept ``depth`` deep on each) and their reports heard every 5 ms.
    ``endpoints`` makes a path's endpoint when a first worker needs it."""

    def __init__(self, pool: RolePool, exchange: Exchange, num_params: int, timeout_s: float,
                 paths: list[str], endpoints: dict[str, Any], probe: Any, chunk_s: float = 0.1, depth: int = 2):
        self.pool, self.exchange, self.timeout_s = pool, exchange, timeout_s
        self.num_params, self.paths = num_params, list(paths)
        self._make, self._probe = endpoints, probe
        self._endpoints: dict[str, Endpoint] = {}
        self.serve_args = (chunk_s, timeout_s)
        self.depth = depth
        self.rows = np.empty((pool.count, num_params), dtype=np.float32)   # each worker's push taken
        self._calls: dict[Any, tuple[int, int]] = {}   # serve call -> (worker, its generation)
        self._events: list[WorkerEvent] = []
        self._published: tuple[int, int] = (-1, -1)    # (version, target version) last published
        self._target: tuple[int, np.ndarray | None] = (-1, None)   # (version, flat target) last flattened
        self._weights: tuple[np.ndarray, np.ndarray, int, int] | None = None   # the newest publication
        self._order = np.arange(pool.count)
        self._next_report = 0.0
        self._closing = False
        self._env_steps_closed = 0     # of endpoints already closed
        try:
            for i in range(pool.count):
                self._attach(i)
        except BaseException:
            self._close_endpoints()
            raise
        for i in range(pool.count):
            self._queue(i)

    @property
    def name(self) -> str:
        """The transport: the paths in use ("shm", "tcp", or "shm+tcp")."""
        return "+".join(p for p in ("shm", "tcp") if p in self.paths)

    def _endpoint(self, path: str) -> Endpoint:
        if path not in self._endpoints:
            self._endpoints[path] = self._make[path](self.pool.count, self.num_params)
            if self._weights is not None:   # the newest publication, for a path opened late
                self._endpoints[path].publish(*self._weights)
        return self._endpoints[path]

    def _attach(self, i: int) -> None:
        endpoint = self._endpoint(self.paths[i])
        attached = self.pool.handles[i].attach.remote(*endpoint.attach_args(i))
        endpoint.joined(i, self.timeout_s)
        ray.get(attached, timeout=self.timeout_s)

    @property
    def publication(self) -> int:
        return next(iter(self._endpoints.values())).published

    @property
    def env_steps(self) -> int:
        """Counted as pushed: a worker that dies loses no pushed step."""
        return self._env_steps_closed + sum(e.env_steps() for e in self._endpoints.values())

    def _queue(self, i: int) -> None:
        current = (i, self.pool.generations[i])
        while not self._closing and sum(call == current for call in self._calls.values()) < self.depth:
            self._calls[self.pool.handles[i].serve.remote(*self.serve_args)] = current

    def publish(self, learner: GradientLearner) -> None:
        """The online parameters straight from the learner's flat buffer; the target flattened only
        when it changed. Asynchronously, unchanged weights are not published again (a round is a
        publication, changed or not)."""
        version = (learner.updates, learner.target_version)
        if not self.exchange.sync and version == self._published:
            for endpoint in self._endpoints.values():
                getattr(endpoint, "unchanged", lambda: None)()   # a worker that asked is told
            return
        if self._target[0] != learner.target_version:
            self._target = (learner.target_version, learner.get_flat_weights()[1])
        self._weights = (learner.flat_params.numpy(), self._target[1], *version)
        for endpoint in self._endpoints.values():
            endpoint.publish(*self._weights)
        self._published = version

    def allow_collect(self, allowed: bool) -> None:
        for endpoint in self._endpoints.values():
            endpoint.allow_collect(allowed)

    def poll(self, wait_s: float) -> list[Push]:
        start = time.perf_counter()
        while True:
            pushes = []
            for i in self._order:
                endpoint = self._endpoints[self.paths[i]]
                if endpoint.ready(i):
                    publication = endpoint.round_of(i)
                    based_on, count = endpoint.take(i, self.rows[i])
                    pushes.append(Push(int(i), self.rows[i] if count else None, publication, based_on, count))
            self._order = np.roll(self._order, 1)   # no worker goes first every time
            self._hear_reports(force=False)
            left = wait_s - (time.perf_counter() - start)
            if pushes or left <= 0:
                return pushes
            if len(self._endpoints) == 1:   # one path: wait on it (a socket path frees the core)
                next(iter(self._endpoints.values())).idle(min(left, 1e-3))
            else:
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
                                             report.wait_s, report.experience.non_finite_steps))
            self._queue(i)

    def events(self) -> list[WorkerEvent]:
        self._hear_reports(force=False)
        events, self._events = self._events, []
        return events

    def replaced(self, worker: int) -> None:
        """The new process is probed (it may be on another host than the one it replaced) and
        attached on its path."""
        self._endpoints[self.paths[worker]].drop(worker)
        self.paths[worker] = self._probe(self.pool.handles[worker])
        self._attach(worker)
        self._queue(worker)

    def close(self, drain: bool) -> list[WorkerEvent]:
        """Stop the workers' loops; ``drain``: hear their last reports and let them detach. Every
        endpoint is closed either way (no segment, no socket left)."""
        for endpoint in self._endpoints.values():
            endpoint.stop()
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
            self._close_endpoints()
        events, self._events = self._events, []
        return events

    def _close_endpoints(self) -> None:
        for endpoint in self._endpoints.values():
            self._env_steps_closed += endpoint.env_steps()
            endpoint.close()
        self._endpoints.clear()


class WorkerLoop:
    """A worker's side: its own loop of pushes, in its process, on its path's ``WorkerEnd``."""

    def __init__(self, end: WorkerEnd, replica: Replica, index: int, exchange: Exchange):
        learner = replica.learner
        self.end, self.replica, self.index, self.exchange = end, replica, index, exchange
        self._based_on = (0, -1)     # (publication, version) of the weights held
        self._target_version = -1
        self._target = np.empty(learner.flat_params.numel(), dtype=np.float32)
        self._since_pull = 0
        self._env_steps_pushed = replica.env_steps

    def serve(self, seconds: float, timeout_s: float) -> ServeReport:
        """Push gradients or models to the server for about ``seconds``: in a round (sync), each
        push from a newer publication than the last; else from the newest weights, taken every
        ``pull_period`` pushes."""
        end, sync, report = self.end, self.exchange.sync, ServeReport(UpdateStats(), Experience(), 0, 0.0, 0.0)
        start = time.perf_counter()
        stop_at = start + seconds
        try:
            while time.perf_counter() < stop_at:
                if sync or self._since_pull == 0:
                    waited = time.perf_counter()
                    if sync and not spin_until(lambda: end.published > self._based_on[0], stop_at - waited,
                                               lambda: end.stopped):
                        report.wait_s += time.perf_counter() - waited
                        break
                    self._pull()
                    report.wait_s += time.perf_counter() - waited
                vector, count = self.replica.work(self.exchange.pushes_gradients, self.exchange.local_steps,
                                                  end.collecting, report.updates)
                waited = time.perf_counter()
                steps, self._env_steps_pushed = self.replica.env_steps - self._env_steps_pushed, self.replica.env_steps
                end.push(self.index, vector, self._based_on, count, steps, timeout_s)
                report.wait_s += time.perf_counter() - waited
                report.pushes += 1
                self._since_pull = (self._since_pull + 1) % self.exchange.pull_period
                if not sync and self._since_pull == 0:
                    end.will_pull()
        except Stopped:
            pass
        report.experience = self.replica.report()
        report.busy_s = time.perf_counter() - start - report.wait_s
        return report

    def _pull(self) -> None:
        """Take the newest weights the server published (the target network only when it changed)."""
        learner = self.replica.learner
        publication, version, target_version = self.end.latest(learner.flat_params.numpy(), self._target,
                                                                self._target_version)
        if target_version != self._target_version:
            learner.set_flat_weights(None, self._target)
            self._target_version = target_version
        self._based_on = (publication, version)

    def close(self) -> None:
        self.end.close()
