"""A group of Ray actors that average one flat vector together, every update: allreduce's ranks,
apex's learner group. Each pair of members uses the cheapest path that really reaches:

    members on one host      shared memory (runtime/collectives.py: no sockets), CPU learners
    members across hosts     torch.distributed (gloo on CPU, nccl on CUDA), its store bound to
                             rank 0's address on the cluster's network (local/rendezvous.py)
    on one host, gloo/nccl   the same, bound to the loopback

Which members share a host is decided by probing, never by assuming: one member of each host
found so far makes a shared-memory segment, and each member reports which of them it can open
(Ray nodes on one machine share /dev/shm; containers and hosts apart do not).

    driver: form_group(members, ...)  ->  GroupSpec (backend, world size, where to meet)
    member: join_group(spec, rank)    ->  self.averager.mean_(vector)  ...  leave_group()

A role mixes ``GroupMember`` in and says what it averages (``group_vector``). The averages are
the same on every member, bit for bit (the same sum in the same order), so replicas that start
equal and apply them alike stay equal.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np
import ray
import torch
import torch.distributed as dist
from ray.exceptions import RayError

from distdqn.errors import ConfigError, RunAborted
from distdqn.local import rendezvous
from distdqn.runtime.collectives import SharedMemoryAllReduce, unlink


@dataclass(frozen=True)
class GroupSpec:
    """Where and how the members meet: ``backend`` shm (``segment`` names the shared memory,
    which rank 0 creates) or gloo / nccl (the store at ``address:port``, hosted by rank 0)."""

    backend: str
    world_size: int
    timeout_s: float
    hosts: int = 1              # distinct hosts among the members (by probe)
    segment: str = ""
    address: str = ""
    port: int = 0


class Averager:
    """A member's side of the group: ``mean_`` replaces a vector by its mean over the members."""

    def __init__(self, spec: GroupSpec, rank: int, size: int, device: torch.device, listener: Any = None):
        self.spec, self.rank = spec, rank
        self._exchange: SharedMemoryAllReduce | None = None
        if spec.backend == "shm":
            self._exchange = SharedMemoryAllReduce(spec.segment, rank, spec.world_size, size, rank == 0,
                                                   spec.timeout_s)
        else:
            rendezvous.init_group(spec.backend, spec.address, spec.port, rank, spec.world_size, spec.timeout_s,
                                  listener)

    @property
    def wait_s(self) -> float:
        """Time spent waiting for the other members (measured by the shared-memory path; NaN otherwise)."""
        return self._exchange.wait_s if self._exchange is not None else float("nan")

    def mean_(self, vector: torch.Tensor) -> None:
        if self._exchange is not None:
            self._exchange.mean_(vector.numpy())
        else:
            dist.all_reduce(vector, op=dist.ReduceOp.SUM)
            vector /= self.spec.world_size

    def close(self) -> None:
        if self._exchange is not None:
            self._exchange.close()
            self._exchange = None
        if dist.is_initialized():
            dist.destroy_process_group()


class GroupMember:
    """What a Ray actor class mixes in to be a member: probes, the rendezvous, join and leave.
    The class defines ``group_vector()``: the tensor it averages (its size and device)."""

    averager: Averager | None = None
    _listener: Any = None
    _probe: shared_memory.SharedMemory | None = None

    def group_vector(self) -> torch.Tensor:
        raise NotImplementedError

    # ---- which members share a host ----
    def make_probe(self) -> str:
        """A shared-memory segment of this host, for other members to try to open."""
        self._probe = shared_memory.SharedMemory(name=f"distdqn-probe-{uuid.uuid4().hex[:16]}", create=True, size=8)
        return self._probe.name

    def opens_any(self, names: list[str]) -> int:
        """The index of the first segment of ``names`` this process can open (on its host), else -1."""
        return next((i for i, name in enumerate(names) if opens_shared_memory(name)), -1)

    def drop_probe(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe.unlink()
            self._probe = None

    # ---- torch.distributed: rank 0 hosts the store ----
    def bind_rendezvous(self, loopback: bool) -> tuple[str, int]:
        """Bind the group's store socket here (rank 0): on the loopback (every member on this
        host), else on this node's address. Returns where the others meet it."""
        address = rendezvous.LOOPBACK if loopback else ray.util.get_node_ip_address()
        self._listener = rendezvous.listen(address)
        return address, self._listener.getsockname()[1]

    def join_group(self, spec: GroupSpec, rank: int) -> str:
        vector = self.group_vector()
        self.averager = Averager(spec, rank, vector.numel(), vector.device, self._listener)
        self._listener = None
        return spec.backend

    def leave_group(self) -> None:
        if self.averager is not None:
            self.averager.close()
            self.averager = None


def opens_shared_memory(name: str) -> bool:
    """Whether this process can open the shared-memory segment ``name`` (it is on its host)."""
    try:
        segment = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return False
    resource_tracker.unregister(segment._name, "shared_memory")   # its maker removes it
    segment.close()
    return True


def host_of_each(members: list, timeout_s: float) -> list[int]:
    """For each member, the index of its host (0 for the first member's), by probing shared memory."""
    hosts, makers, probes = [], [], []
    try:
        for member in members:
            found = ray.get(member.opens_any.remote(probes), timeout=timeout_s) if probes else -1
            if found < 0:
                probes.append(ray.get(member.make_probe.remote(), timeout=timeout_s))
                makers.append(member)
                found = len(probes) - 1
            hosts.append(found)
    finally:
        ray.get([m.drop_probe.remote() for m in makers], timeout=timeout_s)
    return hosts


def resolve_backend(backend: str, hosts: int, cuda: bool, field: str) -> str:
    """``backend`` (auto, shm, gloo, nccl) for members on ``hosts`` hosts: auto is nccl for CUDA
    learners, shm on one host, else gloo; shm that cannot be is a config error naming ``field``."""
    if backend == "shm" and (hosts > 1 or cuda):
        why = f"the members are on {hosts} hosts" if hosts > 1 else "the learners are on CUDA"
        raise ConfigError(f"{field}: shm needs CPU learners on one host; {why} (use auto or gloo)")
    if backend == "auto":
        return "nccl" if cuda else ("shm" if hosts == 1 else "gloo")
    return backend


def form_group(members: list, backend: str, cuda: bool, timeout_s: float, field: str, what: str) -> GroupSpec:
    """Probe where the members are, choose the backend (``field`` is its config key), and have
    every member join; the first to fail or time out ends it in one line (``what`` names the group)."""
    hosts = len(set(host_of_each(members, timeout_s)))
    backend = resolve_backend(backend, hosts, cuda, field)
    spec = GroupSpec(backend, len(members), timeout_s, hosts)
    if backend == "shm":
        spec = GroupSpec(backend, len(members), timeout_s, hosts, segment=f"distdqn-{uuid.uuid4().hex[:16]}")
        wait_all([members[0].join_group.remote(spec, 0)], timeout_s, f"{what}: creating the shared memory")
        joined = [members[r].join_group.remote(spec, r) for r in range(1, len(members))]
    else:
        address, port = ray.get(members[0].bind_rendezvous.remote(hosts == 1), timeout=timeout_s)
        spec = GroupSpec(backend, len(members), timeout_s, hosts, address=address, port=port)
        joined = [m.join_group.remote(spec, r) for r, m in enumerate(members)]
    try:
        wait_all(joined, timeout_s + 30, f"{what}: forming the group")
    except RunAborted:
        remove(spec)
        raise
    return spec


def remove(spec: GroupSpec) -> None:
    """The group's shared memory, if a member that died could not remove it (this host's)."""
    if spec.backend == "shm":
        unlink(spec.segment)


def wait_all(refs: list, timeout_s: float, what: str) -> list:
    """Every member's answer, in rank order. The first to fail ends the wait at once (the others
    would block in the collective): one line naming it; likewise past the deadline."""
    pending = {ref: rank for rank, ref in enumerate(refs)}
    results: dict[int, Any] = {}
    deadline = time.perf_counter() + timeout_s
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
        if not ready:
            raise RunAborted(f"{what}: rank(s) {sorted(pending.values())} did not finish within {timeout_s:.0f} s; "
                             f"the run stopped (the last checkpoint is intact)")
        rank = pending.pop(ready[0])
        try:
            results[rank] = ray.get(ready[0])
        except RayError as exc:
            raise RunAborted(f"{what}: rank {rank} failed ({type(exc).__name__}); the run stopped "
                             f"(the last checkpoint is intact)") from None
    return [results[rank] for rank in range(len(refs))]


def weights_hash(*weights: dict[str, np.ndarray]) -> str:
    """A short hash of parameter dicts (replicas in step have equal hashes)."""
    import hashlib
    h = hashlib.sha256()
    for w in weights:
        for key in sorted(w):
            h.update(key.encode())
            h.update(np.ascontiguousarray(w[key]).tobytes())
    return h.hexdigest()[:16]
