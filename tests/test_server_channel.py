"""The parameter server's shared-memory channel between real processes (no Ray): a reader never
sees a half-written publication while the server keeps publishing, every push reaches the server
once and in order, a stopped server ends a worker's wait, and the segment is removed."""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid

import numpy as np
import pytest

from distdqn.runtime.updates.shared_memory import Segment
from distdqn.runtime.updates.waiting import Stopped

SIZE = 50_000   # large enough that a copy takes longer than a publication's announcement


def _reader(name: str, workers: int, out) -> None:
    channel = Segment(name, workers, SIZE, create=False)
    online, target = np.empty(SIZE, np.float32), np.empty(SIZE, np.float32)
    held_target, seen, torn = -1, [], 0
    while not channel.stopped:
        if not channel.published:
            continue
        _, version, target_version = channel.latest(online, target, held_target)
        held_target = target_version
        # every publication is constant: online all == version, target all == target_version
        torn += int(online.min() != online.max() or online[0] != version)
        torn += int(target.min() != target.max() or target[0] != target_version)
        seen.append(version)
    channel.close()
    out.put((seen, torn))


def _pusher(name: str, worker: int, workers: int, pushes: int, out) -> None:
    channel = Segment(name, workers, SIZE, create=False)
    for k in range(pushes):
        channel.push(worker, np.full(SIZE, 1000 * worker + k, np.float32), (k, k), 1, 3, timeout_s=30)
    channel.close()
    out.put(worker)


def test_readers_never_see_a_torn_publication():
    name = f"distdqn-test-{uuid.uuid4().hex[:12]}"
    server = Segment(name, 2, SIZE, create=True)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    readers = [ctx.Process(target=_reader, args=(name, 2, out)) for _ in range(2)]
    for p in readers:
        p.start()
    deadline = time.perf_counter() + 3.0
    version = 0
    while time.perf_counter() < deadline:
        version += 1
        target_version = version // 10   # the target changes every 10 publications
        server.publish(np.full(SIZE, version, np.float32), np.full(SIZE, target_version, np.float32),
                       version, target_version)
    server.stop()
    results = [out.get(timeout=60) for _ in readers]
    for p in readers:
        p.join(timeout=30)
    server.close()
    for seen, torn in results:
        assert torn == 0
        assert len(seen) > 100 and seen == sorted(seen)   # newest first seen never goes back


def test_every_push_arrives_once_in_order():
    name = f"distdqn-test-{uuid.uuid4().hex[:12]}"
    server = Segment(name, 2, SIZE, create=True)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    pushers = [ctx.Process(target=_pusher, args=(name, w, 2, 200, out)) for w in range(2)]
    for p in pushers:
        p.start()
    received = {0: [], 1: []}
    row = np.empty(SIZE, np.float32)
    deadline = time.perf_counter() + 60
    while min(len(v) for v in received.values()) < 200 and time.perf_counter() < deadline:
        for w in (0, 1):
            if server.ready(w):
                based_on, count = server.take(w, row)
                assert row.min() == row.max() and count == 1
                received[w].append((int(row[0]) - 1000 * w, based_on))
    for p in pushers:
        p.join(timeout=30)
    assert server.env_steps() == 2 * 200 * 3
    server.close()
    for w in (0, 1):
        assert received[w] == [(k, k) for k in range(200)]
    with pytest.raises(FileNotFoundError):   # the creator removed the segment
        Segment(name, 2, SIZE, create=False)


def test_a_stopped_server_ends_a_workers_wait_and_a_silent_one_times_out():
    name = f"distdqn-test-{uuid.uuid4().hex[:12]}"
    server = Segment(name, 1, 10, create=True)
    worker = Segment(name, 1, 10, create=False)
    worker.push(0, np.ones(10, np.float32), (0, 0), 1, 0, timeout_s=1)   # the slot was free
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="server took no push"):   # the first push was never taken
        worker.push(0, np.ones(10, np.float32), (0, 0), 1, 0, timeout_s=0.3)
    assert time.perf_counter() - start < 3
    server.stop()
    with pytest.raises(Stopped):
        worker.push(0, np.ones(10, np.float32), (0, 0), 1, 0, timeout_s=30)
    worker.close()
    server.close()
