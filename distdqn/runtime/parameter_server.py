"""ParameterServer: the server of sync_ps and async_ps, in the driver: its learner (online and
target networks, optimizer), its workers (PSWorker, on the cluster) and the update channel
between them (runtime/updates/), chosen once, when it starts:

    start(job, resume)  ->  server          workers started, restored, the transport resolved
    server.gather(...)  ->  Round           sync: this publication's pushes
    server.next_push()  ->  Push            async: whichever comes first
    server.apply_gradient / move_toward     the two kinds of update (math in core: the learner);
                                            never one with a NaN or infinity (refused, counted)
    server.publish()                        the new weights to the workers
    server.close()

While it waits for pushes it hands what the channel heard to the conductor: episodes and update
metrics counted, a worker that died replaced (and given the channel's path again), the stall
deadline checked. The conductor knows nothing of parameter servers.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from distdqn.core.finite import NonFiniteStreak, finite
from distdqn.core.learner import DQNLearner
from distdqn.core.records import Experience
from distdqn.local import build
from distdqn.runtime.conductor import Conductor
from distdqn.runtime.roles.ps_worker import PSWorker
from distdqn.runtime.updates import (
    Push,
    Round,
    UpdateChannel,
    WorkerDied,
    WorkerEvent,
    transports,
)


@dataclass
class ServerTimes:
    """Where the time goes, summed over the run: the workers' working and waiting (for weights,
    or for the server to take a push), and the server's waiting for pushes. Logged in each row."""

    worker_busy_s: float = 0.0
    worker_wait_s: float = 0.0
    server_wait_s: float = 0.0


class ParameterServer:
    def __init__(self, job: Conductor, learner: DQNLearner, channel: UpdateChannel):
        self.job, self.learner, self.channel = job, learner, channel
        self.times = ServerTimes()
        self._env_steps_base = job.counters.env_steps
        self._late: set[int] = set()     # sync: workers that missed a round and have not pushed since
        self._queue: deque[Push] = deque()
        self._closed = False
        self.refused = NonFiniteStreak(learner.cfg.max_non_finite_updates, "the parameter server")
        job.add_closer(lambda: self.close(drain=False))   # however the run ends: no segment, no call left
        self.publish()

    @property
    def transport(self) -> str:
        return self.channel.name

    @property
    def version(self) -> int:
        """Learner updates applied so far: a worker's update made at version v is this minus v stale."""
        return self.learner.updates

    def weights(self) -> dict[str, np.ndarray]:
        return self.learner.get_weights()

    # ---- the two kinds of update (never one with a NaN or infinity) ----
    def apply_gradient(self, grads: np.ndarray) -> bool:
        """theta <- optimizer step with ``grads`` (a mean over workers, or one worker's); False
        (nothing changed) if ``grads`` is not finite."""
        if not self._admits(grads):
            return False
        self.learner.apply_gradient(grads)
        return True

    def move_toward(self, model: np.ndarray, rate: float, num_updates: int) -> bool:
        """theta <- theta + rate * (model - theta): model averaging (the mean of the workers'
        models, rate 1: the sync form), or one worker's model mixed in (rate eta, the async
        parameter form). Counts ``num_updates`` updates, with the target updates they make.
        False (nothing changed) if ``model`` is not finite."""
        if not self._admits(model):
            return False
        theta = self.learner.flat_params.numpy()
        theta += rate * (model - theta)
        self.learner.advance(num_updates)
        return True

    def _admits(self, vector: np.ndarray) -> bool:
        """Whether an update is finite; one that is not is counted (``non_finite_updates``), and
        ``learner.max_non_finite_updates`` in a row end the run in one line."""
        if self.refused.check(finite(vector)):
            return True
        self.job.counters.non_finite_updates += 1
        return False

    # ---- the channel ----
    def publish(self) -> None:
        self.channel.publish(self.learner)

    def allow_collect(self, allowed: bool) -> None:
        self.channel.allow_collect(allowed)

    def gather(self, timeout_s: float, min_workers: int) -> Round:
        """This publication's pushes: waits up to ``timeout_s`` for every worker that is not late,
        then for at least ``min_workers`` (up to the stall deadline). A worker that misses the
        round is late, and not waited for, until its late push arrives (dropped: it was made
        from older weights)."""
        publication, taken, start = self.channel.publication, {}, time.perf_counter()
        num = self.job.pool.count
        while True:
            for push in self._poll():
                self._late.discard(push.worker)
                if push.publication == publication:
                    taken[push.worker] = push
            pending = set(range(num)) - set(taken) - self._late
            enough = len(taken) >= min(min_workers, num)
            if taken and (not pending or (enough and time.perf_counter() - start > timeout_s)):
                break
        self._late |= pending
        return Round(list(taken.values()), len(pending))

    def next_push(self) -> Push:
        """The next push to arrive (async)."""
        while not self._queue:
            self._queue.extend(self._poll())
        return self._queue.popleft()

    def _poll(self) -> list[Push]:
        """What arrives within a moment; meanwhile the channel's events are handed on."""
        start = time.perf_counter()
        pushes = self.channel.poll(wait_s=0.05)
        self.times.server_wait_s += time.perf_counter() - start
        self._hand_on(self.channel.events())
        if not pushes:
            self.job.check_stall()
        return pushes

    def _hand_on(self, events: list[WorkerEvent]) -> None:
        """Reports counted (the run's env steps are the channel's count), the dead replaced."""
        for event in events:
            if isinstance(event, WorkerDied):
                self.job.replace(event.worker)
                self._late.add(event.worker)   # not waited for until its first push
                self.channel.replaced(event.worker)
                continue
            self.job.absorb(Experience(0, event.episodes, event.non_finite_steps))
            self.job.add_updates(event.updates)
            self.times.worker_busy_s += event.busy_s
            self.times.worker_wait_s += event.wait_s
        self.job.counters.env_steps = self._env_steps_base + self.channel.env_steps

    def close(self, drain: bool) -> None:
        """The workers' side of the channel stopped; ``drain``: their last reports counted."""
        if self._closed:
            return
        self._closed = True
        events = self.channel.close(drain)
        if drain:
            self._hand_on([e for e in events if not isinstance(e, WorkerDied)])


def start(job: Conductor, resume: dict[str, Any] | None) -> ParameterServer:
    """The server's learner here (it keeps the target network), its PSWorkers on the cluster,
    both restored from ``resume`` if given, the run opened, and the channel between them:
    ``<topology>.transport``, auto resolved by what really reaches (runtime/updates/transports.py)."""
    cfg = job.cfg
    learner = build.build_learner(cfg, job.info)
    pool = job.start_workers(PSWorker)
    job.restore(resume, learner)
    job.open()
    return ParameterServer(job, learner, transports.open_channel(cfg, pool, learner, job.stall_timeout_s))
