"""apex's group of data-parallel learners (apex.num_learners): each learner is a full replica,
they average every update's clipped gradient, so they stay identical, and they agree on whether
to sample at all (the leader, learner 0, judges the replay ratio; the others follow it).

Within one node the group exchanges through shared memory (runtime/collectives.py: every rank
sums the same slots in the same order, so replicas stay identical bit for bit); across nodes with
torch.distributed (gloo on CPU, nccl on GPUs), its store at the leader's node and a free port.
Every exchange waits at most ``timeout_s``: a lost learner ends the others' call with an error.

``LearnerGroup`` is a learner's side, ``form_group`` the driver's.
"""

from __future__ import annotations

import datetime
import hashlib
import socket
import time
import uuid
from typing import Any

import numpy as np
import ray
import torch
import torch.distributed as dist
from ray.exceptions import RayError

from distdqn.errors import ConfigError
from distdqn.runtime.collectives import SharedMemoryAllReduce, unlink


class LearnerGroup:
    """One learner's membership: ``mean_`` (the ``reduce_grads`` of ``DQNLearner.step``) and
    ``agree`` (the leader's word, to every learner)."""

    def __init__(self, backend: str, address: str, port: int, rank: int, world_size: int,
                 size: int, timeout_s: float):
        self.backend, self.rank, self.world_size = backend, rank, world_size
        self.wait_s = 0.0   # in exchanges (shared memory: waiting for the others)
        self._grads = self._agreement = None
        if backend == "shm":   # the leader creates both segments before the others attach
            self._grads = SharedMemoryAllReduce(address, rank, world_size, size, rank == 0, timeout_s)
            self._agreement = SharedMemoryAllReduce(address + "-a", rank, world_size, 1, rank == 0, timeout_s)
            return
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
        self._flag = torch.zeros(1, dtype=torch.float32, device="cuda" if backend == "nccl" else "cpu")

    def mean_(self, grads: list[torch.Tensor]) -> None:
        """Replace the flat gradient by its mean over the group, in place."""
        (g,) = grads
        start = time.perf_counter()
        if self._grads is not None:
            self._grads.mean_(g.numpy())
        else:
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
            g /= self.world_size
        self.wait_s += time.perf_counter() - start

    def agree(self, flag: bool) -> bool:
        """The leader's ``flag``, on every learner (what the others pass is ignored)."""
        start = time.perf_counter()
        if self._agreement is not None:
            vector = np.array([float(flag) * self.world_size if self.rank == 0 else 0.0], dtype=np.float32)
            self._agreement.mean_(vector)
            agreed = bool(vector[0] > 0.5)
        else:
            self._flag.fill_(float(flag))
            dist.broadcast(self._flag, src=0)
            agreed = bool(self._flag.item() > 0.5)
        self.wait_s += time.perf_counter() - start
        return agreed

    def close(self) -> None:
        for exchange in (self._grads, self._agreement):
            if exchange is not None:
                exchange.close()
        self._grads = self._agreement = None
        if dist.is_initialized():
            dist.destroy_process_group()


def rendezvous_address(one_node: bool) -> tuple[str, int]:
    """An address and a free port for the leader to host the group's TCP store: loopback when
    every learner is on this node, else this node's IP."""
    host = "127.0.0.1" if one_node else ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    return host, port


def parameter_hash(learner: Any) -> str:
    """A hash of a learner's online and target parameters (replicas in step have equal hashes)."""
    h = hashlib.sha256()
    for weights in (learner.get_weights(), learner.get_target_weights()):
        for key in sorted(weights):
            h.update(key.encode())
            h.update(np.ascontiguousarray(weights[key]).tobytes())
    return h.hexdigest()[:16]


def resolve_backend(backend: str, nodes: set[str], gpus: float) -> str:
    """apex.group_backend with ``auto`` resolved: shared memory for CPU learners on one node,
    else nccl on GPUs, gloo on CPUs."""
    if backend == "shm" and len(nodes) > 1:
        raise ConfigError(f"apex.group_backend: shm needs every learner on one node; they are on {len(nodes)}")
    if backend != "auto":
        return backend
    if gpus > 0:
        return "nccl"
    return "shm" if len(nodes) == 1 else "gloo"


def form_group(learners: list, backend: str, one_node: bool, timeout_s: float) -> str:
    """Every learner joins the group (``backend`` resolved); returns the shared-memory segments'
    name ('' for torch.distributed), for the driver to remove if a learner could not."""
    address, port = (f"distdqn-{uuid.uuid4().hex[:16]}", 0) if backend == "shm" else ray.get(
        learners[0].rendezvous_address.remote(one_node), timeout=timeout_s)
    joined = [learners[0].join_group.remote(backend, address, port, 0, len(learners), timeout_s)]
    if backend == "shm":   # the leader creates the segments before the others attach
        _wait(joined, timeout_s)
    joined += [h.join_group.remote(backend, address, port, rank, len(learners), timeout_s)
               for rank, h in enumerate(learners) if rank > 0]
    _wait(joined, timeout_s + 30)
    return address if backend == "shm" else ""


def remove_segments(name: str) -> None:
    """The group's shared memory, if a learner that was killed left it."""
    if name:
        unlink(name)
        unlink(name + "-a")


def _wait(refs: list, timeout_s: float) -> None:
    try:
        ray.get(refs, timeout=timeout_s)
    except RayError as exc:
        raise RuntimeError(f"the apex learners could not form their group ({type(exc).__name__})") from None
