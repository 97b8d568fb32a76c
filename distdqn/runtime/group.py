"""A group of Ray actors that average one flat vector together, every update: allreduce's ranks,
apex's learner group. Each pair of members uses the cheapest path that really reaches:

    members on one host      shared memory (runtime/collectives.py: no sockets), CPU learners
    members across hosts     hierarchical (CPU): each host's members hand their vectors to its
                             leader in shared memory, the leaders all-reduce the hosts' sums with
                             gloo, each leader shares the result back; with one member per host
                             that is a flat gloo group
    backend gloo / nccl      a flat torch.distributed group of every member (nccl on CUDA)
    any torch.distributed    its store bound to rank 0's address on the cluster's network
                             (local/rendezvous.py), to the loopback when every member is on one host

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
from distdqn.runtime.collectives import HostReduce, SharedMemoryAllReduce, unlink


@dataclass(frozen=True)
class GroupSpec:
    """Where and how the members meet: ``backend`` shm (``segment`` names the shared memory,
    which rank 0 creates) or gloo / nccl (the store at ``address:port``, hosted by rank 0)."""

    backend: str                # shm, hierarchical (shm on each host + gloo among leaders), gloo, nccl
    world_size: int
    timeout_s: float
    host_of: tuple[int, ...] = ()   # each member's host (0: rank 0's), by probe
    segment: str = ""           # shm: the group's; hierarchical: a prefix, one per host
    address: str = ""
    port: int = 0

    @property
    def hosts(self) -> int:
        return len(set(self.host_of)) or 1


class Averager:
    """A member's side of the group: ``mean_`` replaces a vector by its mean over the members."""

    def __init__(self, spec: GroupSpec, rank: int, size: int, device: torch.device, listener: Any = None,
                 local_address: str | None = None):
        """``local_address``: this member's own address on the cluster's network (gloo exchanges
        on its interface); None: the store's (every member on one host)."""
        self.spec, self.rank = spec, rank
        self._exchange: SharedMemoryAllReduce | None = None
        self._host: HostReduce | None = None
        if spec.backend == "shm":
            self._exchange = SharedMemoryAllReduce(spec.segment, rank, spec.world_size, size, rank == 0,
                                                   spec.timeout_s)
        elif spec.backend == "hierarchical":
            host = spec.host_of[rank]
            local = [r for r, h in enumerate(spec.host_of) if h == host]
            leader = local[0] == rank
            self._host = _attach_host(f"{spec.segment}-h{host}", local.index(rank), len(local), size, leader,
                                      spec.timeout_s)
            if leader:   # the leaders' group: one rank per host, host h's leader its rank h
                rendezvous.init_group("gloo", spec.address, spec.port, host, spec.hosts, spec.timeout_s, listener,
                                      local_address)
        else:
            rendezvous.init_group(spec.backend, spec.address, spec.port, rank, spec.world_size, spec.timeout_s,
                                  listener, local_address)

    @property
    def wait_s(self) -> float:
        """Time spent waiting for the members of this host (measured by the shared-memory paths;
        NaN for a flat torch.distributed group)."""
        exchange = self._exchange or self._host
        return exchange.wait_s if exchange is not None else float("nan")

    def mean_(self, vector: torch.Tensor) -> None:
        if self._exchange is not None:
            self._exchange.mean_(vector.numpy())
        elif self._host is not None:
            self._host.reduce_(vector.numpy(), self._combine)
        else:
            dist.all_reduce(vector, op=dist.ReduceOp.SUM)
            vector /= self.spec.world_size

    def _combine(self, host_sum: np.ndarray) -> None:
        """A leader: the hosts' sums all-reduced among the leaders, divided by every member."""
        total = torch.from_numpy(host_sum)
        if self.spec.hosts > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        total /= self.spec.world_size

    def close(self) -> None:
        for exchange in (self._exchange, self._host):
            if exchange is not None:
                exchange.close()
        self._exchange = self._host = None
        if dist.is_initialized():
            dist.destroy_process_group()


def _attach_host(name: str, local_rank: int, local_size: int, size: int, leader: bool, timeout_s: float) -> HostReduce:
    """The host's exchange: its leader creates it; the others attach once it exists."""
    deadline = time.perf_counter() + timeout_s
    while True:
        try:
            return HostReduce(name, local_rank, local_size, size, leader, timeout_s)
        except FileNotFoundError:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the host's leader made no exchange {name} within {timeout_s:.0f} s") from None
            time.sleep(0.01)


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
        own = None if spec.hosts == 1 else ray.util.get_node_ip_address()
        self.averager = Averager(spec, rank, vector.numel(), vector.device, self._listener, own)
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


def resolve_backend(backend: str, host_of: list[int], cuda: bool, field: str) -> str:
    """``backend`` (auto, shm, gloo, nccl) for members on the hosts ``host_of``: auto is nccl for
    CUDA learners, shm on one host, else hierarchical (a flat gloo group when every host has one
    member); shm that cannot be is a config error naming ``field``."""
    hosts = len(set(host_of))
    if backend == "shm" and (hosts > 1 or cuda):
        why = f"the members are on {hosts} hosts" if hosts > 1 else "the learners are on CUDA"
        raise ConfigError(f"{field}: shm needs CPU learners on one host; {why} (use auto or gloo)")
    if backend == "auto":
        if cuda:
            return "nccl"
        if hosts == 1:
            return "shm"
        return "gloo" if hosts == len(host_of) else "hierarchical"
    return backend


def form_group(members: list, backend: str, cuda: bool, timeout_s: float, field: str, what: str) -> GroupSpec:
    """Probe where the members are, choose the backend (``field`` is its config key), and have
    every member join; the first to fail or time out ends it in one line (``what`` names the group)."""
    host_of = tuple(host_of_each(members, timeout_s))
    backend = resolve_backend(backend, list(host_of), cuda, field)
    segment = f"distdqn-{uuid.uuid4().hex[:16]}"
    if backend == "shm":
        spec = GroupSpec(backend, len(members), timeout_s, host_of, segment=segment)
        wait_all([members[0].join_group.remote(spec, 0)], timeout_s, f"{what}: creating the shared memory")
        joined = [members[r].join_group.remote(spec, r) for r in range(1, len(members))]
    else:   # rank 0 hosts the store (of every member, or of the hosts' leaders: it leads host 0)
        address, port = ray.get(members[0].bind_rendezvous.remote(len(set(host_of)) == 1), timeout=timeout_s)
        spec = GroupSpec(backend, len(members), timeout_s, host_of, segment=segment, address=address, port=port)
        joined = [m.join_group.remote(spec, r) for r, m in enumerate(members)]
    try:
        wait_all(joined, timeout_s + 30, f"{what}: forming the group")
    except RunAborted:
        remove(spec)
        raise
    return spec


def remove(spec: GroupSpec) -> None:
    """The group's shared memory on this host, if a member that died could not remove it."""
    if spec.backend == "shm":
        unlink(spec.segment)
    elif spec.backend == "hierarchical":
        for host in set(spec.host_of):
            unlink(f"{spec.segment}-h{host}")


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
