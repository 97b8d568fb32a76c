"""The TCP path of the update channel's loops (runtime/updates/loops.py): a worker on another host
than the server's meets it over one socket, a message per push and per pull, instead of a Ray
call per update.

    server (SocketServer: listens on its node's address)          worker i (SocketWorkerEnd)
      <--------- HELLO i -------------------------------------------  connects at attach
      <--------- PUSH header (+ the flat vector) ---------------------  push(): after the ACK of the previous
      ACK ------------------------------------------------------------>  (the server took it: one push in flight)
      WEIGHTS (online, and the target when it changed) ------------->  sync: every publication
      <--------- PULL ----------------------------------------------     async: every pull_period pushes, right behind a push;
      WEIGHTS, or CURRENT (nothing newer) --------------------------->   answered at the next publication
      CONTROL (collect / stop) -------------------------------------->

Every message is a fixed header of six int64 (kind and five fields) and, for pushes and weights,
float32 vectors in the learner's flat layout. The server never blocks on one socket: it reads
and writes each without blocking, in its poll, so that a slow link slows only its own worker.
The listening socket is bound to the server's address on the cluster's network (only a run that
spans hosts uses this path; docs/running.md lists the ports a firewall must keep inside).
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections import deque

import numpy as np

from distdqn.runtime.updates.waiting import Stopped

HEADER = struct.Struct("<6q")
HELLO, PUSH, ACK, WEIGHTS, PULL, CURRENT, CONTROL = range(7)
COLLECT_FLAG, STOP_FLAG = 1, 2


class _Reader:
    """A non-blocking reader of one socket's messages: a header, then its vector into ``payload``."""

    def __init__(self, sock: socket.socket, num_params: int):
        self.sock = sock
        self.header = bytearray(HEADER.size)
        self.payload = np.empty(num_params, dtype=np.float32)
        self._view = memoryview(self.header)
        self._offset, self._in_payload = 0, False
        self.fields: tuple[int, ...] | None = None

    def read(self) -> tuple[int, ...] | None:
        """The next whole message's header fields once it is in (its vector in ``payload``), else
        None; raises ConnectionError when the peer has gone."""
        while True:
            view = self._view if not self._in_payload else memoryview(self.payload).cast("B")
            try:
                n = self.sock.recv_into(view[self._offset:])
            except (BlockingIOError, InterruptedError):
                return None
            if n == 0:
                raise ConnectionError("the peer closed its connection")
            self._offset += n
            if self._offset < len(view):
                continue
            self._offset = 0
            if not self._in_payload:
                self.fields = HEADER.unpack(self.header)
                if self.fields[0] == PUSH and self.fields[5]:   # a push that carries its vector
                    self._in_payload = True
                    continue
                return self.fields
            self._in_payload = False
            return self.fields


class _Writer:
    """A non-blocking writer: messages queued, sent as the socket takes them; a weights message
    not yet begun is replaced by a newer one (only the newest publication matters)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.queue: deque[tuple[int, list[memoryview]]] = deque()   # (kind, parts not yet sent)

    def put(self, kind: int, parts: list[bytes]) -> None:
        if kind == WEIGHTS and self.queue and self.queue[-1][0] == WEIGHTS and len(self.queue) > 1:
            self.queue.pop()   # the last one has not begun (the first may have): the newest replaces it
        self.queue.append((kind, [memoryview(p).cast("B") for p in parts]))
        self.flush()

    def flush(self) -> None:
        while self.queue:
            _, parts = self.queue[0]
            while parts:
                try:
                    n = self.sock.send(parts[0])
                except (BlockingIOError, InterruptedError):
                    return
                parts[0] = parts[0][n:]
                if not len(parts[0]):
                    parts.pop(0)
            self.queue.popleft()


class SocketServer:
    """The server's end of the TCP path: an ``Endpoint`` (runtime/updates/loops.py)."""

    path = "tcp"

    def __init__(self, num_workers: int, num_params: int, address: str, sync: bool):
        self.num_params, self.sync = num_params, sync
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((address, 0))
        self.listener.listen(num_workers + 8)
        self.address, self.port = self.listener.getsockname()
        self._readers: dict[int, _Reader] = {}
        self._writers: dict[int, _Writer] = {}
        self._pending: dict[int, tuple[int, ...]] = {}   # worker -> its push's fields, not yet taken
        self._held = [0] * num_workers                     # the publication each worker was last sent
        self._held_target = [-1] * num_workers             # ... and the target version
        self._wants: set[int] = set()                      # async: asked for weights, not answered
        self._steps = [0] * num_workers
        self._published, self._version, self._target_version = 0, -1, -1
        self._online: np.ndarray | None = None
        self._target: np.ndarray | None = None
        self._flags = COLLECT_FLAG

    @property
    def published(self) -> int:
        return self._published

    def attach_args(self, worker: int) -> tuple:
        return ("tcp", self.address, self.port)

    def joined(self, worker: int, timeout_s: float) -> None:
        """Accept worker ``worker``'s connection (its HELLO names it) within ``timeout_s``."""
        deadline = time.perf_counter() + timeout_s
        while worker not in self._readers:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([self.listener], [], [], left)[0]:
                raise TimeoutError(f"worker {worker} did not connect to the server at {self.address}:{self.port} "
                                   f"within {timeout_s:.0f} s")
            sock, _ = self.listener.accept()
            sock.settimeout(timeout_s)
            index = HEADER.unpack(_recv_exactly(sock, HEADER.size))[1]
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._forget(index)
            self._readers[index], self._writers[index] = _Reader(sock, self.num_params), _Writer(sock)
            self._held[index], self._held_target[index] = 0, -1
            if self._online is not None:
                self._send_weights(index)

    # ---- weights ----
    def publish(self, online: np.ndarray, target: np.ndarray, version: int, target_version: int) -> None:
        self._published += 1
        self._online, self._target = online, target
        self._version, self._target_version = version, target_version
        for worker in list(self._writers) if self.sync else sorted(self._wants):
            self._send_weights(worker)

    def unchanged(self) -> None:
        """An async publication that changed nothing: a worker that asked gets the newest it lacks,
        or is told it holds it."""
        for worker in sorted(self._wants):
            if self._held[worker] < self._published:
                self._send_weights(worker)
            else:
                self._wants.discard(worker)
                self._put(worker, CURRENT, [])

    def _send_weights(self, worker: int) -> None:
        """The newest publication, its target only if the worker lacks it (copied now: the
        server's learner goes on changing)."""
        with_target = self._held_target[worker] != self._target_version
        parts = [self._online.tobytes()] + ([self._target.tobytes()] if with_target else [])
        self._put(worker, WEIGHTS, parts, self._published, self._version, self._target_version, int(with_target))
        self._held[worker], self._held_target[worker] = self._published, self._target_version
        self._wants.discard(worker)

    def _put(self, worker: int, kind: int, parts: list[bytes], *fields: int) -> None:
        writer = self._writers.get(worker)
        if writer is None:
            return
        values = [*fields, 0, 0, 0, 0, 0][:4]
        try:
            writer.put(kind, [HEADER.pack(kind, *values, self._flags), *parts])
        except OSError:
            self._forget(worker)   # gone: Ray reports its process, and it is replaced

    # ---- pushes ----
    def _read(self, worker: int) -> None:
        reader = self._readers.get(worker)
        if reader is None:
            return
        try:
            self._writers[worker].flush()
            while worker not in self._pending:
                fields = reader.read()
                if fields is None:
                    return
                if fields[0] == PUSH:
                    self._pending[worker] = fields
                    self._steps[worker] += fields[4]
                elif fields[0] == PULL:
                    self._wants.add(worker)
                    if self._held[worker] < self._published:
                        self._send_weights(worker)
        except OSError:
            self._forget(worker)

    def idle(self, wait_s: float) -> None:
        """Until a worker's socket has something to read (or one with output waiting can take
        more), at most ``wait_s``: the server sleeps in the kernel instead of spinning."""
        readers = [r.sock for r in self._readers.values()]
        writers = [w.sock for w in self._writers.values() if w.queue]
        if readers or writers:
            select.select(readers, writers, [], wait_s)
        else:
            time.sleep(wait_s)

    def ready(self, worker: int) -> bool:
        self._read(worker)
        return worker in self._pending

    def round_of(self, worker: int) -> int:
        return self._pending[worker][1]

    def take(self, worker: int, into: np.ndarray) -> tuple[int, int]:
        """The push's vector into ``into``; its (based-on version, learner updates); acknowledged."""
        fields = self._pending.pop(worker)
        if fields[5]:
            into[:] = self._readers[worker].payload
        self._put(worker, ACK, [])
        return fields[2], fields[3]

    def drop(self, worker: int) -> None:
        """Worker ``worker`` was replaced: its connection closed (the new process connects anew)."""
        self._forget(worker)

    def _forget(self, worker: int) -> None:
        reader = self._readers.pop(worker, None)
        self._writers.pop(worker, None)
        self._pending.pop(worker, None)
        self._wants.discard(worker)
        if reader is not None:
            reader.sock.close()

    def env_steps(self) -> int:
        return sum(self._steps)

    def allow_collect(self, allowed: bool) -> None:
        flags = (self._flags & ~COLLECT_FLAG) | (COLLECT_FLAG if allowed else 0)
        if flags != self._flags:
            self._flags = flags
            for worker in list(self._writers):
                self._put(worker, CONTROL, [])

    def stop(self) -> None:
        self._flags |= STOP_FLAG
        for worker in list(self._writers):
            self._put(worker, CONTROL, [])

    def close(self) -> None:
        for worker in list(self._readers):
            self._forget(worker)
        self.listener.close()


class SocketWorkerEnd:
    """A worker's end of the TCP path: a ``WorkerEnd`` (runtime/updates/loops.py)."""

    def __init__(self, address: str, port: int, index: int, num_params: int, sync: bool, timeout_s: float):
        self.sync, self.timeout_s = sync, timeout_s
        self.sock = socket.create_connection((address, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(HEADER.pack(HELLO, index, 0, 0, 0, 0))
        self._online = np.empty(num_params, dtype=np.float32)
        self._target = np.empty(num_params, dtype=np.float32)
        self._received = (0, -1, -1)        # (publication, version, target version) newest in
        self._flags = COLLECT_FLAG
        self._unacked = 0
        self._answered = False              # async: the last PULL was answered
        self._asked = False                 # async: a PULL is out

    # ---- what the server sent ----
    def _pump(self, wait_s: float) -> None:
        """Read every message that has arrived (waiting up to ``wait_s`` for a first one)."""
        while select.select([self.sock], [], [], wait_s)[0]:
            kind, publication, version, target_version, extra, flags = HEADER.unpack(
                _recv_exactly(self.sock, HEADER.size))
            self._flags = flags
            if kind == WEIGHTS:
                _recv_exactly_into(self.sock, self._online)
                if extra:
                    _recv_exactly_into(self.sock, self._target)
                self._received = (publication, version, target_version)
                self._answered = True
            elif kind == ACK:
                self._unacked -= 1
            elif kind == CURRENT:
                self._answered = True
            wait_s = 0.0

    @property
    def collecting(self) -> bool:
        self._pump(0.0)
        return bool(self._flags & COLLECT_FLAG)

    @property
    def stopped(self) -> bool:
        self._pump(0.0)
        return bool(self._flags & STOP_FLAG)

    @property
    def published(self) -> int:
        self._pump(0.0)
        return self._received[0]

    def will_pull(self) -> None:
        """Async: ask for the weights now (right behind the push just sent, so the answer holds
        it), to have them by the time the worker has computed its next push: one round trip per
        update hidden behind the work instead of waited for."""
        if not self.sync and not self._asked:
            self._answered, self._asked = False, True
            self.sock.sendall(HEADER.pack(PULL, 0, 0, 0, 0, 0))

    def latest(self, online: np.ndarray, target: np.ndarray, held_target: int) -> tuple[int, int, int]:
        """The newest weights (async: asked of the server, if ``will_pull`` did not, and waited for)."""
        if not self.sync:
            self.will_pull()
            self._wait(lambda: self._answered, "weights")
            self._asked = False
        _, _, target_version = self._received
        online[:] = self._online
        if target_version != held_target:
            target[:] = self._target
        return self._received

    # ---- pushes ----
    def push(self, worker: int, vector: np.ndarray | None, based_on: tuple[int, int], num_updates: int,
             env_steps: int, timeout_s: float) -> None:
        """Send the push once the server has taken the previous one."""
        self._wait(lambda: self._unacked == 0, "its previous push to be taken")
        has_vector = int(vector is not None)
        self.sock.sendall(HEADER.pack(PUSH, based_on[0], based_on[1], num_updates, env_steps, has_vector))
        if has_vector:
            self.sock.sendall(memoryview(np.ascontiguousarray(vector, dtype=np.float32)).cast("B"))
        self._unacked += 1

    def _wait(self, done, what: str) -> None:
        deadline = time.perf_counter() + self.timeout_s
        while not done():
            if self._flags & STOP_FLAG:
                raise Stopped
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"the server sent no {what} within {self.timeout_s:.0f} s")
            self._pump(min(left, 0.05))

    def close(self) -> None:
        self.sock.close()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    _recv_exactly_into(sock, buf)
    return bytes(buf)


def _recv_exactly_into(sock: socket.socket, into) -> None:
    view, offset = memoryview(into).cast("B"), 0
    while offset < len(view):
        n = sock.recv_into(view[offset:])
        if n == 0:
            raise ConnectionError("the server closed its connection")
        offset += n
