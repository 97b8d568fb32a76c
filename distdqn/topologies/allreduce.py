"""allreduce: decentralized data-parallel DQN, no server (synchronous SGD with all-reduce, as in
Goyal et al. 2017, "Accurate, Large Minibatch SGD", and Horovod / PyTorch DDP).

    +-------------------------- placement group (packed together) ---------------------------+
    | AllReduceRank 0             AllReduceRank 1             ...   AllReduceRank N-1          |
    | env, replay, learner        env, replay, learner              env, replay, learner       |
    |        \\_______________ all-reduce(mean of clipped gradients), every update ___________/ |
    +-------------------------------------------------------------------------------------------+
             ^ the driver (this function) only starts calls of ``updates_per_call`` updates on
               every rank, evaluates rank 0's weights, logs and checkpoints

Every rank starts from the same weights and applies the same averaged gradient with the same Adam,
so the replicas stay identical (each also updates its own target network, identically); the
driver checks this with a parameter hash per rank. The ranks form one group (runtime/group.py):
ranks that share a host (found by probing shared memory) average through it, without sockets;
otherwise torch.distributed (gloo on CPU, nccl on GPUs), its rendezvous bound to rank 0's
address. A rank that dies or stalls ends the run with an error within
``allreduce.collective_timeout_s``; the other ranks are stopped, nothing waits forever.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

from distdqn.config import Config
from distdqn.envs import EnvInfo
from distdqn.local import build
from distdqn.local.session import RunResult
from distdqn.runtime import group
from distdqn.runtime.conductor import worker_conductor
from distdqn.runtime.messages import RunCounters, RunState
from distdqn.runtime.roles.allreduce_rank import AllReduceRank
from distdqn.runtime.weights import fetch


@dataclass(frozen=True)
class AllReduceSummary:
    backend: str                  # how the ranks averaged: shm, gloo or nccl
    hosts: int                    # hosts the ranks were on (by probe)
    collections_in_step: float    # the share of collection points at which every rank collected
    replica_hashes: list[str]     # each rank's parameters at the end, hashed
    replicas_identical: bool


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    r = cfg.allreduce
    job = worker_conductor(cfg, run_dir, info, RunCounters())
    spec = None
    try:
        # ---- build: one group over the ranks; every replica starts from the same weights ----
        pool = job.start_workers(AllReduceRank, placement=True)
        ranks = pool.handles
        cuda = cfg.learner.device == "cuda" or (cfg.learner.device == "auto" and cfg.workers.gpus > 0)
        spec = group.form_group(ranks, r.backend, cuda, r.collective_timeout_s, "allreduce.backend", "allreduce")
        if job.restore(resume) is None:   # resumed: the ranks' replicas (learners included) came back
            initial = build.build_learner(cfg, info).get_weights()
            ray.get([h.set_weights.remote(initial, initial) for h in ranks], timeout=r.collective_timeout_s)
        job.open()
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
                        **({"rank0_exchange_wait_s": rounds.waited_s} if spec.backend == "shm" else {})}):
                    break
            rounds.drain()

        # ---- tear down: replicas must be identical; final evaluation, checkpoint, summary ----
        hashes = ray.get([h.weights_hash.remote() for h in ranks], timeout=r.collective_timeout_s)
        if len(set(hashes)) != 1:
            job.session.note(f"replicas differ at the end: {hashes}")
        final_state, weights = state(), _rank0_weights(ranks, r.collective_timeout_s)
        ray.get([h.leave_group.remote() for h in ranks], timeout=r.collective_timeout_s)
        return job.finish(weights, final_state, AllReduceSummary(spec.backend, spec.hosts, rounds.collections_in_step,
                                                                 hashes, len(set(hashes)) == 1))
    except RayError as exc:
        raise job.aborted(exc) from None
    finally:
        job.close()
        if spec is not None:   # the segment, if a rank could not remove it (killed): on this node
            group.remove(spec)


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
            self.queued.append([h.train_allreduce.remote(self.updates_per_call) for h in self.ranks])

    def take(self) -> None:
        """The oldest round's reports, counted."""
        reports = group.wait_all(self.queued.popleft(), self.timeout_s, "allreduce: a round of synchronized updates")
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


def _rank0_weights(ranks: list, timeout_s: float) -> dict:
    """Rank 0's current weights (for evaluation), after the rounds queued before this call."""
    return fetch(ray.get(ranks[0].publish.remote(), timeout=timeout_s + 30).box)
