"""allreduce: decentralized data-parallel DQN, no server (synchronous SGD with all-reduce, as in
Goyal et al. 2017, "Accurate, Large Minibatch SGD", and Horovod / PyTorch DDP).

    +-------------------------- placement group (packed together) ---------------------------+
    | ReplicaWorker rank 0        ReplicaWorker rank 1        ...   ReplicaWorker rank N-1     |
    | env, replay, learner        env, replay, learner              env, replay, learner       |
    |        \\_______________ all-reduce(mean of clipped gradients), every update ___________/ |
    +-------------------------------------------------------------------------------------------+
             ^ the driver (this function) only starts calls of ``updates_per_call`` updates on
               every rank, evaluates rank 0's weights, logs and checkpoints

Every rank starts from the same weights and applies the same averaged gradient with the same Adam,
so the replicas stay identical (each also updates its own target network, identically); the
driver checks this with a parameter hash per rank. Ranks on one node average through shared memory
(runtime/collectives.py: no sockets, about a tenth of gloo's time on loopback); otherwise the
process group is formed as Ray Train does it: rank 0 names its node's address and a free port,
every rank joins with torch.distributed (gloo on CPU, nccl on GPUs). A rank that dies or stalls ends the run with an error within
``allreduce.collective_timeout_s``; the other ranks are stopped, nothing waits forever.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

from distdqn.config import Config
from distdqn.envs import EnvInfo
from distdqn.errors import ConfigError
from distdqn.local import build
from distdqn.local.session import RunResult
from distdqn.runtime.collectives import unlink
from distdqn.runtime.conductor import RunAborted, worker_conductor
from distdqn.runtime.messages import RunCounters, RunState
from distdqn.runtime.roles.replica_worker import ReplicaWorker
from distdqn.runtime.weights import fetch


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    r = cfg.allreduce
    job = worker_conductor(cfg, run_dir, info, RunCounters())
    backend, address = r.backend, ""
    try:
        # ---- build: one group over the workers; every replica starts from the same weights ----
        pool = job.start_workers(ReplicaWorker, True, placement=True)   # each rank updates its own target
        ranks = pool.handles
        backend, address = _form_group(cfg, pool)
        if job.restore(resume) is None:   # resumed: the ranks' replicas (learners included) came back
            initial = build.build_learner(cfg, info).get_weights()
            ray.get([h.set_weights.remote(initial, initial) for h in ranks], timeout=r.collective_timeout_s)
        job.open(_rank0_weights(ranks, r.collective_timeout_s))
        rounds = _Rounds(job, ranks, r.updates_per_call, r.collective_timeout_s + 30)

        def state() -> RunState:
            rounds.drain()   # the counters then match the learner and replicas being saved
            learner = ray.get(ranks[0].state_dict.remote(False), timeout=r.collective_timeout_s)["learner"]
            return RunState(learner, job.counters, job.replicas())

        # ---- loop: two rounds of updates_per_call synchronized updates queued on every rank ----
        with job.conducting():
            while job.counters.env_steps < cfg.train.total_env_steps:
                rounds.fill()
                rounds.take()
                if job.housekeeping(lambda: _rank0_weights(ranks, r.collective_timeout_s), state, lambda: {
                        "learner_busy_s": rounds.busy_s, "collections_in_step": rounds.collections_in_step,
                        **({"rank0_exchange_wait_s": rounds.waited_s} if backend == "shm" else {})}):
                    break
            rounds.drain()

        # ---- tear down: replicas must be identical; final evaluation, checkpoint, summary ----
        hashes = ray.get([h.weights_hash.remote() for h in ranks], timeout=r.collective_timeout_s)
        if len(set(hashes)) != 1:
            job.session.note(f"replicas differ at the end: {hashes}")
        final_state, weights = state(), _rank0_weights(ranks, r.collective_timeout_s)
        ray.get([h.leave_group.remote() for h in ranks], timeout=r.collective_timeout_s)
        return job.finish(weights, final_state, backend=backend, collections_in_step=rounds.collections_in_step,
                          replica_hashes=hashes, replicas_identical=len(set(hashes)) == 1)
    except RayError as exc:
        raise job.aborted(exc) from None
    finally:
        job.close()
        if backend == "shm":   # the segment, if rank 0 could not remove it (killed): on this node
            unlink(address)


class _Rounds:
    """Rounds of synchronized updates kept queued on every rank (``depth`` of them), so that no
    rank idles between rounds while the driver reads the previous one; each round taken is counted."""

    def __init__(self, job: Any, ranks: list, updates_per_call: int, timeout_s: float, depth: int = 2):
        self.job, self.ranks, self.updates_per_call = job, ranks, updates_per_call
        self.timeout_s, self.depth = timeout_s, depth
        self.queued: deque[list] = deque()
        self.busy_s, self.waited_s = 0.0, 0.0   # rank 0's time in rounds, and waiting for the others
        self.collections = [0, 0]               # collection points shared by every rank, and in all

    def fill(self) -> None:
        while len(self.queued) < self.depth:
            self.queued.append([h.train_allreduce.remote(self.updates_per_call, False) for h in self.ranks])

    def take(self) -> None:
        """The oldest round's reports, counted."""
        reports = _wait_all(self.queued.popleft(), self.timeout_s, "a round of synchronized updates")
        for report in reports:
            self.job.absorb(report.experience)
            self.job.add_updates(report.updates)
        self.job.counters.learner_updates = reports[0].learner_updates
        self.busy_s += max(report.busy_s for report in reports)
        if reports[0].exchange_wait_s == reports[0].exchange_wait_s:   # not NaN (shm)
            self.waited_s += reports[0].exchange_wait_s
        points = [set(report.collected_at) for report in reports]
        self.collections[0] += len(set.intersection(*points))
        self.collections[1] += len(set.union(*points))

    @property
    def collections_in_step(self) -> float:
        """The share of collection points at which every rank collected (1: the ranks act in step)."""
        return self.collections[0] / self.collections[1] if self.collections[1] else 1.0

    def drain(self) -> None:
        while self.queued:
            self.take()


def _form_group(cfg: Config, pool: Any) -> tuple[str, str]:
    """The ranks' group (shared memory on one node, else torch.distributed); returns the backend
    and the shared-memory segment's name or the rendezvous address."""
    r, ranks = cfg.allreduce, pool.handles
    backend = _backend(cfg, {p["node_id"] for p in pool.identities().values() if p})
    address, port = (f"distdqn-{uuid.uuid4().hex[:16]}", 0) if backend == "shm" else ray.get(
        ranks[0].rendezvous_address.remote(), timeout=r.collective_timeout_s)
    joined = [ranks[0].join_group.remote(address, port, 0, len(ranks), backend, r.collective_timeout_s)]
    if backend == "shm":   # rank 0 creates the segment before the others attach to it
        _wait_all(joined, r.collective_timeout_s, "creating the shared memory")
    joined += [h.join_group.remote(address, port, rank, len(ranks), backend, r.collective_timeout_s)
               for rank, h in enumerate(ranks) if rank > 0]
    return _wait_all(joined, r.collective_timeout_s + 30, "forming the process group")[0], address


def _rank0_weights(ranks: list, timeout_s: float) -> dict:
    """Rank 0's current weights (for evaluation), after the rounds queued before this call."""
    return fetch(ray.get(ranks[0].publish.remote(), timeout=timeout_s + 30).box)


def _backend(cfg: Config, nodes: set[str]) -> str:
    """allreduce.backend, with ``auto`` resolved where it can be here: shm for CPU workers that
    are all on one node (the workers resolve nccl or gloo themselves)."""
    backend = cfg.allreduce.backend
    if backend == "shm" and len(nodes) > 1:
        raise ConfigError(f"allreduce.backend: shm needs every rank on one node; the workers are on {len(nodes)}")
    if backend == "auto" and len(nodes) == 1 and cfg.workers.gpus == 0 and cfg.learner.device != "cuda":
        return "shm"
    return backend


def _wait_all(refs: list, timeout_s: float, what: str) -> list:
    """Results of every rank's call, in rank order. The first rank to fail ends the wait at once
    (the others would block in the collective): the run stops with an error naming it."""
    pending = {ref: rank for rank, ref in enumerate(refs)}
    results: dict[int, Any] = {}
    deadline = time.perf_counter() + timeout_s
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
        if not ready:
            raise RunAborted(f"allreduce: rank(s) {sorted(pending.values())} did not finish {what} within "
                             f"{timeout_s:.0f} s; the run stopped (the last checkpoint is intact)")
        rank = pending.pop(ready[0])
        try:
            results[rank] = ray.get(ready[0])
        except RayError as exc:
            raise RunAborted(f"allreduce: rank {rank} failed during {what} "
                             f"({type(exc).__name__}); the run stopped (the last checkpoint is intact)") from None
    return [results[rank] for rank in range(len(refs))]
