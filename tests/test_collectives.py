"""The shared-memory all-reduce between real processes (no Ray): every rank gets the mean,
bit-identical across ranks, whatever their speed; a missing rank ends the wait with an error."""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from distdqn.runtime.collectives import SharedMemoryAllReduce, unlink

SIZE = 1000


def _rank(name: str, rank: int, world: int, steps: int, out) -> None:
    exchange = SharedMemoryAllReduce(name, rank, world, SIZE, create=False, timeout_s=30)
    rng = np.random.default_rng(rank)
    results = []
    for step in range(steps):
        vector = (rng.normal(size=SIZE) + step).astype(np.float32)
        if rank == 1 and step % 7 == 0:
            time.sleep(0.01)                          # a slow rank now and then
        exchange.mean_(vector)
        results.append(vector.copy())
    exchange.close()
    out.put((rank, np.stack(results)))


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_same_mean(world):
    name = f"distdqn-test-{uuid.uuid4().hex[:12]}"
    owner = SharedMemoryAllReduce(name, 0, world, SIZE, create=True, timeout_s=30)   # rank 0, here
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(name, r, world, 40, out)) for r in range(1, world)]
    for p in procs:
        p.start()
    mine, expected = [], []
    inputs = {r: np.random.default_rng(r) for r in range(world)}
    for step in range(40):
        vectors = [(inputs[r].normal(size=SIZE) + step).astype(np.float32) for r in range(world)]
        expected.append(np.add.reduce(np.stack(vectors), axis=0) / world)
        vector = vectors[0].copy()   # rank 0's, drawn as _rank draws it
        owner.mean_(vector)
        mine.append(vector)
    others = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    owner.close()
    np.testing.assert_allclose(np.stack(mine), np.stack(expected), rtol=1e-6, atol=1e-6)
    for r in range(1, world):
        np.testing.assert_array_equal(others[r], np.stack(mine))   # identical replicas need identical means
    with pytest.raises(FileNotFoundError):                           # the creator removed the segment
        SharedMemoryAllReduce(name, 1, world, SIZE, create=False, timeout_s=1)


def test_a_missing_rank_ends_the_wait_with_an_error():
    name = f"distdqn-test-{uuid.uuid4().hex[:12]}"
    exchange = SharedMemoryAllReduce(name, 0, 2, SIZE, create=True, timeout_s=0.5)
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"rank\(s\) \[1\]"):
        exchange.mean_(np.ones(SIZE, np.float32))
    assert time.perf_counter() - start < 5
    exchange.close()
    unlink(name)   # already gone: no error


def _member(spec, rank: int, steps: int, out) -> None:
    import torch

    from distdqn.runtime.group import Averager
    averager = Averager(spec, rank, SIZE, torch.device("cpu"), _rebind(spec) if rank == 0 else None)
    rng = np.random.default_rng(rank)
    results = []
    for step in range(steps):
        vector = torch.from_numpy((rng.normal(size=SIZE) + step).astype(np.float32))
        if rank == 2 and step % 5 == 0:
            time.sleep(0.01)
        averager.mean_(vector)
        results.append(vector.numpy().copy())
    averager.close()
    out.put((rank, np.stack(results)))


def _rebind(spec):
    """Rank 0's store socket, bound in its own process to the port the test chose."""
    import socket
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((spec.address, spec.port))
    sock.listen(16)
    return sock


@pytest.mark.parametrize("host_of", [(0, 0, 1, 1), (0, 0, 0, 1), (0, 1, 1)])
def test_a_hierarchical_all_reduce_gives_every_member_the_same_mean(host_of):
    """Shared memory among each host's members, gloo among one leader per host (here the hosts
    are segments of one machine, the leaders' gloo on the loopback): every member ends with the
    mean over all of them, bit-identical, whatever the hosts' sizes."""
    from distdqn.local.rendezvous import LOOPBACK, listen
    from distdqn.runtime.group import GroupSpec, remove

    probe = listen(LOOPBACK)
    port = probe.getsockname()[1]
    probe.close()   # rank 0 binds it again in its own process
    spec = GroupSpec("hierarchical", len(host_of), 30.0, host_of, segment=f"distdqn-test-{uuid.uuid4().hex[:12]}",
                     address=LOOPBACK, port=port)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(spec, r, 30, out)) for r in range(len(host_of))]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    remove(spec)
    expected = np.stack([np.add.reduce(np.stack([(np.random.default_rng(r).normal(size=(30, SIZE))
                                                  + np.arange(30)[:, None]).astype(np.float32)[s]
                                                 for r in range(len(host_of))]), axis=0) / len(host_of)
                         for s in range(30)])
    np.testing.assert_allclose(results[0], expected, rtol=1e-5, atol=1e-5)
    for r in range(1, len(host_of)):
        np.testing.assert_array_equal(results[r], results[0])   # identical replicas need identical means
    assert not list(Path("/dev/shm").glob(f"{spec.segment}*"))
