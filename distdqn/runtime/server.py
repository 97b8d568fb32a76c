"""ParameterServer: the server's DQNLearner (online and target networks, optimizer), its version,
and its side of the weights channel: each version of the online and target weights is put into
the object store once and pushed with every worker's call, less what the worker already holds.

The parameter-server topologies (sync_ps, async_ps, federated) run it in the driver, which
conducts the workers' calls; all the arithmetic is in ``core`` (the learner, ``core.aggregate``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from multiprocessing import shared_memory
from typing import Any, Self

import numpy as np
import ray

from distdqn.core import aggregate
from distdqn.core.finite import NonFiniteStreak, finite
from distdqn.core.learner import DQNLearner
from distdqn.core.records import Experience
from distdqn.errors import ConfigError
from distdqn.runtime.messages import Weights
from distdqn.runtime.server_channel import ServerChannel

# Weights are put into the object store once per version and every worker reads them from there:
# put once, read by all, which is what a large network needs. For a network as small as CartPole's
# that costs more than it saves (`python -m benchmarks.ps_round`, benchmarks/RESULTS.md): choosing
# by size is a lead not yet taken.


class ParameterServer:
    def __init__(self, learner: DQNLearner):
        self.learner = learner
        self._online: tuple[int, list] | None = None   # (version, [ref]) of the last put
        self._target: tuple[int, list] | None = None
        self._held: dict[int, tuple[int, int]] = {}    # worker -> (online, target) versions it was sent
        self.refused = NonFiniteStreak(learner.cfg.max_non_finite_updates, "the parameter server")

    @property
    def version(self) -> int:
        """Learner updates applied so far: a worker's update made at version v is this minus v stale."""
        return self.learner.updates

    def weights(self) -> dict[str, np.ndarray]:
        return self.learner.get_weights()

    # ---- the kinds of update a server applies (never one with a NaN or infinity: refused, counted) ----
    def apply_gradient(self, grads: np.ndarray) -> bool:
        """theta <- optimizer step with ``grads`` (a mean over workers, or one worker's), one flat
        vector in the learner's layout (``flat_grads``)."""
        if not self.refused.check(finite(grads)):
            return False
        self.learner.apply_gradient(grads)
        return True

    def move_toward(self, model: np.ndarray, rate: float, num_updates: int) -> bool:
        """theta <- theta + rate * (model - theta), ``model`` a flat vector: model averaging (the
        mean of the workers' models, rate 1: the sync form), or one worker's model mixed in (rate
        eta, the async parameter form). Counts ``num_updates`` updates, with the target updates they make."""
        if not self.refused.check(finite(model)):
            return False
        theta = self.learner.flat_params.numpy()
        theta += rate * (model - theta)
        self.learner.advance(num_updates)
        return True

    def apply_delta(self, delta: Mapping[str, np.ndarray], num_updates: int, rate: float = 1.0) -> bool:
        """theta <- theta + rate * delta (an aggregate of workers' updates), counting ``num_updates``."""
        if not self.refused.check(finite(delta)):
            return False
        self.learner.set_weights(aggregate.add_scaled(self.learner.get_weights(), delta, rate))
        self.learner.advance(num_updates)
        return True

    # ---- the weights channel ----
    def weights_for(self, worker: int) -> Weights:
        """The current online and target weights (each put once per version), leaving out a part
        that ``worker`` was already sent: the target network changes only every
        ``target_update_period`` updates, and need not travel meanwhile."""
        if self._online is None or self._online[0] != self.version:
            self._online = (self.version, [ray.put(self.learner.get_weights())])
        if self._target is None or self._target[0] != self.learner.target_version:
            self._target = (self.learner.target_version, [ray.put(self.learner.get_target_weights())])
        held = self._held.get(worker, (-1, -1))
        self._held[worker] = (self._online[0], self._target[0])
        return Weights(self._online[0], [] if held[0] == self._online[0] else self._online[1],
                       self._target[0], [] if held[1] == self._target[0] else self._target[1])

    def forget(self, worker: int) -> None:
        """``worker`` was replaced: it holds nothing yet."""
        self._held.pop(worker, None)


class WorkerLoops:
    """The server's side of ``transport: shm`` (sync_ps, async_ps with every worker on the driver's
    node): the workers run loops of their own (``ReplicaWorker.serve``) and exchange weights and
    pushes with the server through a ServerChannel; the driver keeps ``depth`` serve calls queued
    on each worker only to hear their reports (experience, update metrics, busy and wait times)
    and to notice a worker that dies. ``sync``: rounds, each push from the newest publication."""

    def __init__(self, job: Any, server: ParameterServer, sync: bool, mode: str, local_steps: int,
                 pull_period: int, chunk_s: float = 0.1, depth: int = 2):
        self.job, self.server, self.pool = job, server, job.pool
        self.call_args = (sync, mode, local_steps, pull_period, chunk_s, job.stall_timeout_s)
        self.depth = depth
        self.name = f"distdqn-ps-{uuid.uuid4().hex[:16]}"
        size = server.learner.flat_params.numel()
        self.channel = ServerChannel(self.name, self.pool.count, size, create=True)
        self.rows = np.empty((self.pool.count, size), dtype=np.float32)   # pushes taken, one row each
        self.env_steps_base = job.counters.env_steps
        self.calls: dict[Any, tuple[int, int]] = {}   # serve call -> (worker, its generation)
        self.closing = False
        self.late: set[int] = set()   # sync: workers that missed a round and have not pushed since
        self._target: tuple[int, np.ndarray | None] = (-1, None)   # (version, flat target) last flattened
        self.busy = {"worker_busy_s": 0.0, "worker_wait_s": 0.0, "server_wait_s": 0.0}
        self._next_poll = 0.0
        ray.get([h.attach.remote(self.name) for h in self.pool.handles], timeout=job.stall_timeout_s)
        self.publish()
        for i in range(self.pool.count):
            self._queue(i)

    def _queue(self, i: int) -> None:
        current = (i, self.pool.generations[i])
        while not self.closing and sum(call == current for call in self.calls.values()) < self.depth:
            self.calls[self.pool.handles[i].serve.remote(*self.call_args)] = current

    @property
    def env_steps(self) -> int:
        """The run's env steps now (the channel's count, ahead of the reports)."""
        return self.env_steps_base + self.channel.env_steps()

    def publish(self) -> None:
        """The server's weights into the channel: the online parameters straight from the learner's
        flat buffer (one copy, into the segment); the target flattened only when it changed."""
        learner = self.server.learner
        if self._target[0] != learner.target_version:
            self._target = (learner.target_version, learner.get_flat_weights()[1])
        self.channel.publish(learner.flat_params.numpy(), self._target[1], learner.updates, learner.target_version)

    def poll(self, force: bool = False) -> None:
        """Count the run's env steps (the channel's count: a worker that dies loses no pushed step);
        every 5 ms (or ``force``), absorb the workers' finished serve calls (episodes, update
        metrics, times) and replace any that died."""
        self.job.counters.env_steps = self.env_steps
        now = time.perf_counter()
        if not force and now < self._next_poll:
            return
        self._next_poll = now + 0.005
        ready, _ = ray.wait(list(self.calls), num_returns=len(self.calls), timeout=0)
        for ref in ready:
            i, generation = self.calls.pop(ref)
            if generation != self.pool.generations[i]:
                continue
            report = self.pool.result(ref)
            if report is None:   # the worker died: a new one takes its slot
                self.job.replace(i)
                self.channel.drop(i)
                self.pool.handles[i].attach.remote(self.name)
                self.late.add(i)   # not waited for until its first push
            else:
                self.job.absorb(Experience(0, report.experience.episodes, report.experience.non_finite_steps))   # env steps: counted above
                self.job.add_updates(report.updates)
                self.busy["worker_busy_s"] += report.busy_s
                self.busy["worker_wait_s"] += report.wait_s
                self.job.progressed()
            self._queue(i)

    def gather_round(self, timeout_s: float, min_workers: int) -> tuple[list[int], int]:
        """This round's pushes (publication ``channel.published``) into ``rows``: waits up to
        ``timeout_s`` for every worker that is not late, then for at least ``min_workers``. A
        worker that misses the round is late, and not waited for, until its late push arrives
        (dropped: it was made on older weights). Returns the learner updates in each push taken,
        and how many workers missed the round."""
        round_, counts, taken = self.channel.published, [], set()
        pending = set(range(self.pool.count)) - self.late
        start = time.perf_counter()
        while True:
            for i in range(self.pool.count):
                if i in taken or not self.channel.ready(i):
                    continue
                if self.channel.round_of(i) != round_:
                    self.channel.drop(i)
                    self.late.discard(i)
                    continue
                counts.append(self.channel.take(i, self.rows[len(counts)])[1])
                taken.add(i)
                pending.discard(i)
                self.late.discard(i)
            enough = len(counts) >= min(min_workers, self.pool.count)
            if counts and (not pending or (enough and time.perf_counter() - start > timeout_s)):
                break
            self._idle()
        self.late |= pending
        return counts, len(pending)

    def next_push(self) -> tuple[int, int]:
        """The first push to arrive (async), taken into ``rows[0]``: (version it was computed from,
        learner updates in it)."""
        order = np.arange(self.pool.count)
        while True:
            for i in order:
                if self.channel.ready(i):
                    return self.channel.take(i, self.rows[0])
            order = np.roll(order, 1)   # no worker goes first every time
            self._idle()

    def _idle(self) -> None:
        """Nothing to take yet: hear reports, check the stall deadline, leave the core a moment."""
        start = time.perf_counter()
        self.poll()
        self.job.check_stall()
        time.sleep(2e-5)
        self.busy["server_wait_s"] += time.perf_counter() - start

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(drain=exc_type is None)

    def close(self, drain: bool = True) -> None:
        """Stop the workers' loops; ``drain``: absorb their last reports (the run ends normally;
        otherwise it is ending on an error). The segment is removed either way."""
        self.channel.stop()
        self.closing = True
        try:
            if drain:
                refs = list(self.calls)
                ray.wait(refs, num_returns=len(refs), timeout=self.job.stall_timeout_s)
                self.poll(force=True)
                ray.get([h.leave_group.remote() for h in self.pool.handles], timeout=self.job.stall_timeout_s)
        finally:
            for ref in self.calls:
                ray.cancel(ref, force=False)
            self.calls.clear()
            self.channel.close()


def resolve_transport(cfg: Any, field: str, pool: Any) -> str:
    """``<field>.transport`` with ``auto`` resolved: shm when every worker shares this machine's
    shared memory (the driver makes a segment, every worker opens it: Ray nodes on one host do,
    containers or hosts apart do not) and learns on CPUs, else ray; an explicit shm that cannot
    be is a config error."""
    transport = getattr(cfg, field).transport
    cpu = cfg.workers.gpus == 0 and cfg.learner.device != "cuda"
    if transport == "ray" or not cpu:
        if transport == "shm":
            raise ConfigError(f"{field}.transport: shm needs CPU learners (workers.gpus is 0, learner.device "
                              f"not cuda); use ray or auto")
        return "ray"
    probe = shared_memory.SharedMemory(name=f"distdqn-probe-{uuid.uuid4().hex[:16]}", create=True, size=8)
    try:
        shared = all(ray.get([h.opens_shared_memory.remote(probe.name) for h in pool.handles],
                             timeout=pool.timeout_s))
    finally:
        probe.close()
        probe.unlink()
    if transport == "shm" and not shared:
        raise ConfigError(f"{field}.transport: shm needs every worker on the driver's machine (its shared "
                          f"memory); some are elsewhere (use ray or auto)")
    return "shm" if shared else "ray"
