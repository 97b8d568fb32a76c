"""The update channel over Ray calls: each push is the answer to a call the server made with the
weights as its argument (``PSWorker.push``), so it works wherever Ray can reach a worker.

Each idle worker gets a call: in a round (sync) once per publication, the newest it has not yet
worked on (a worker whose call missed its round rejoins at the newest publication as soon as its
late answer is in); asynchronously at every publication, with fresh weights every
``pull_period`` pushes (``None`` otherwise: it keeps the weights it holds). The online and target
weights are each put into the object store once per version and travel only to a worker that
does not hold them yet (``PushedWeights``).
"""

from __future__ import annotations

from typing import Any

import ray

from distdqn.core.learner import GradientLearner
from distdqn.runtime.pool import RolePool
from distdqn.runtime.updates import Exchange, Push, WorkerDied, WorkerEvent, WorkerReport
from distdqn.runtime.weights import PushedWeights


class RayCallsChannel:
    name = "ray"

    def __init__(self, pool: RolePool, exchange: Exchange, drain_s: float = 5.0):
        self.pool, self.exchange, self.drain_s = pool, exchange, drain_s
        self.weights = PushedWeights()
        self._publication = 0
        self._learner: GradientLearner | None = None
        self._calls: dict[Any, tuple[int, int, int]] = {}   # call -> (worker, generation, publication)
        self._idle = set(range(pool.count))
        self._worked_on = [0] * pool.count                   # the publication each worker was last sent
        self._since_pull = [0] * pool.count                  # pushes since its last fresh weights
        self._collect = True
        self._closing = False
        self._env_steps = 0
        self._events: list[WorkerEvent] = []

    @property
    def publication(self) -> int:
        return self._publication

    @property
    def env_steps(self) -> int:
        return self._env_steps

    def publish(self, learner: GradientLearner) -> None:
        self._learner = learner
        self._publication += 1
        for worker in sorted(self._idle):
            self._dispatch(worker)

    def _dispatch(self, worker: int) -> None:
        """The worker's next call, if it is due one."""
        if self._closing or (self.exchange.sync and self._worked_on[worker] >= self._publication):
            return
        fresh = self.exchange.sync or self._since_pull[worker] == 0
        weights = self.weights.weights_for(worker, self._learner) if fresh else None
        self._since_pull[worker] = (self._since_pull[worker] + 1) % self.exchange.pull_period
        ref = self.pool.handles[worker].push.remote(weights, self._collect)
        self._calls[ref] = (worker, self.pool.generations[worker], self._publication)
        self._worked_on[worker] = self._publication
        self._idle.discard(worker)

    def allow_collect(self, allowed: bool) -> None:
        self._collect = allowed

    def poll(self, wait_s: float) -> list[Push]:
        if not self._calls:
            return []
        ready, _ = ray.wait(list(self._calls), num_returns=1, timeout=wait_s)
        if ready:
            ready, _ = ray.wait(list(self._calls), num_returns=len(self._calls), timeout=0)
        pushes = []
        for ref in ready:
            worker, generation, publication = self._calls.pop(ref)
            if generation != self.pool.generations[worker]:
                continue   # the answer of a process that was replaced
            report = self.pool.result(ref)
            if report is None:
                self._events.append(WorkerDied(worker))
                continue
            self._env_steps += report.experience.env_steps
            self._events.append(WorkerReport(worker, report.experience.episodes, report.updates, report.busy_s,
                                             non_finite_steps=report.experience.non_finite_steps))
            pushes.append(Push(worker, report.vector, publication, report.based_on, report.num_updates))
            self._idle.add(worker)
            if self.exchange.sync:
                self._dispatch(worker)   # late for its round: on to the newest publication
        return pushes

    def events(self) -> list[WorkerEvent]:
        events, self._events = self._events, []
        return events

    def replaced(self, worker: int) -> None:
        self.weights.forget(worker)
        self._since_pull[worker], self._worked_on[worker] = 0, 0
        self._idle.add(worker)
        if self._learner is not None:
            self._dispatch(worker)

    def close(self, drain: bool) -> list[WorkerEvent]:
        """Calls still in flight are waited for up to ``drain_s`` (their experience counts), then
        dropped (a running call is not interrupted: Ray only drops queued ones)."""
        self._closing = True
        if drain and self._calls:
            ray.wait(list(self._calls), num_returns=len(self._calls), timeout=self.drain_s)
            self.poll(0)
        for ref in self._calls:
            ray.cancel(ref, force=False)
        self._calls.clear()
        return self.events()
