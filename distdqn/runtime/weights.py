"""The weights channel, as Acme's VariableSource / VariableClient: a learner or server publishes
``Weights(version, [ref])``, each weights put into the object store once and read by every
receiver (zero-copy on the same node); each actor or worker holds a WeightsClient that takes the
newest publication, offered with a call (servers push with each call: ``PushedWeights``) or asked
of the source every ``update_period`` steps without waiting for the answer (apex actors pull).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError

from distdqn.runtime.messages import NO_WEIGHTS, Weights

FETCH_TIMEOUT_S = 60.0   # reading a publication from the object store, at most (by default)


def fetch(box: list, timeout_s: float = FETCH_TIMEOUT_S) -> Any:
    """The boxed weights: read from the object store, or as they are when passed by value."""
    item = box[0]
    return ray.get(item, timeout=timeout_s) if isinstance(item, ray.ObjectRef) else item


class WeightsPublisher:
    """The source side: ``publish`` puts the weights into the object store once and remembers the
    newest publication. ``background``: the put runs on a thread of its own (a put waits for the
    node's object store, which a training thread would otherwise spend idle); one at a time."""

    def __init__(self, background: bool = False):
        self.newest: Weights = NO_WEIGHTS
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="publisher") if background else None
        if self._thread is not None:
            self._thread.submit(lambda: None).result()   # the thread exists now (CPU affinity moves it)
        self._putting: Future | None = None

    def publish(self, version: int, weights: dict[str, np.ndarray]) -> None:
        """Publish ``weights`` (a copy the caller no longer changes) as ``version``."""
        self.wait(FETCH_TIMEOUT_S)
        if self._thread is None:
            self._put(version, weights)
        else:
            self._putting = self._thread.submit(self._put, version, weights)

    def _put(self, version: int, weights: dict[str, np.ndarray]) -> None:
        publication = Weights(version, [ray.put(weights)])
        if version > self.newest.version:
            self.newest = publication

    def wait(self, timeout_s: float) -> None:
        """Until a put under way is in the store (raises what the put raised)."""
        if self._putting is not None:
            self._putting.result(timeout=timeout_s)
            self._putting = None


class PushedWeights:
    """A server's side of weights pushed with its calls: each version of the online and target
    weights put into the object store once, and for each receiver what it already holds, so
    that a part it holds does not travel again (the target network changes only every
    ``target_update_period`` updates)."""

    def __init__(self):
        self._online: tuple[int, list] | None = None   # (version, [ref]) of the last put
        self._target: tuple[int, list] | None = None
        self._held: dict[int, tuple[int, int]] = {}    # receiver -> (online, target) versions it was sent

    def weights_for(self, receiver: int, learner: Any) -> Weights:
        """The learner's current online and target weights, less what ``receiver`` holds."""
        if self._online is None or self._online[0] != learner.updates:
            self._online = (learner.updates, [ray.put(learner.get_weights())])
        if self._target is None or self._target[0] != learner.target_version:
            self._target = (learner.target_version, [ray.put(learner.get_target_weights())])
        held = self._held.get(receiver, (-1, -1))
        self._held[receiver] = (self._online[0], self._target[0])
        return Weights(self._online[0], [] if held[0] == self._online[0] else self._online[1],
                       self._target[0], [] if held[1] == self._target[0] else self._target[1])

    def forget(self, receiver: int) -> None:
        """``receiver`` was replaced: it holds nothing yet."""
        self._held.pop(receiver, None)


class WeightsClient:
    """The receiving side: the versions held, and newer publications taken. ``source`` (an actor
    handle with a ``published()`` call) and ``update_period``: ``update()`` asks the source every
    ``update_period`` calls, and takes the answer at a later call, once it and the weights it
    names have arrived. ``fetch_timeout_s``: how long weights offered with a call may take to
    read (a slow link to the publisher's node makes them slow, not lost)."""

    def __init__(self, source: Any = None, update_period: int = 1, fetch_timeout_s: float = FETCH_TIMEOUT_S):
        self.version, self.target_version = -1, -1
        self.newest_seen = -1        # the newest version the source has announced
        self.source, self.update_period = source, max(1, update_period)
        self.fetch_timeout_s = fetch_timeout_s
        self.late_fetches = 0        # requests of update() dropped after FETCH_TIMEOUT_S
        self._calls = 0
        self._asked: Future | None = None
        self._fetcher: _Fetcher | None = None

    def offer(self, weights: Weights | None) -> tuple[dict | None, dict | None]:
        """The (online, target) weights of ``weights`` that are newer than those held (None for
        each that is not, or that did not travel); the caller sets them."""
        if weights is None:
            return None, None
        self.newest_seen = max(self.newest_seen, weights.version)
        online = target = None
        if weights.target_box and weights.target_version != self.target_version:
            target = fetch(weights.target_box, self.fetch_timeout_s)
        if weights.box and weights.version > self.version:
            online = fetch(weights.box, self.fetch_timeout_s)
            self.version = weights.version
        if target is not None:
            self.target_version = weights.target_version
        return online, target

    def update(self) -> dict | None:
        """Newer online weights from the source if an earlier request has brought them, else None;
        asks again every ``update_period`` calls. Never waits: one request at a time, the ask and
        the read of the weights it names on a thread of their own, so that a slow or briefly cut
        link to the source's node makes the weights held older, never the caller slower. A request
        not answered, or whose weights are not read, within FETCH_TIMEOUT_S is dropped (counted in
        ``late_fetches``) and asked again; a source that died raises here."""
        taken = None
        if self._asked is not None and self._asked.done():
            asked, self._asked = self._asked, None
            try:
                weights, online = asked.result()
            except GetTimeoutError:
                self.late_fetches += 1
            else:
                self.newest_seen = max(self.newest_seen, weights.version)
                if online is not None and weights.version > self.version:
                    taken, self.version = online, weights.version
        self._calls += 1
        if self._asked is None and self._calls >= self.update_period:
            self._calls = 0
            self._fetcher = self._fetcher or _Fetcher()
            self._asked = self._fetcher.submit(self._newest)
        return taken

    def _newest(self) -> tuple[Weights, dict | None]:
        """On the fetcher's thread: the source's newest publication, and its online weights if they
        are newer than those held (read into this node)."""
        weights = ray.get(self.source.published.remote(), timeout=FETCH_TIMEOUT_S)
        newer = weights.box and weights.version > self.version
        return weights, fetch(weights.box) if newer else None

    def reset(self) -> None:
        """Forget what is held (a replica whose state was just loaded from a checkpoint)."""
        self.version, self.target_version = -1, -1


class _Fetcher:
    """One daemon thread running a client's requests in turn: a request under way never holds up
    the process's exit (a ThreadPoolExecutor's thread would be joined at exit)."""

    def __init__(self):
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="weights-fetch", daemon=True).start()

    def submit(self, request: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._requests.put((request, future))
        return future

    def _serve(self) -> None:
        while True:
            request, future = self._requests.get()
            try:
                future.set_result(request())
            except BaseException as exc:  # noqa: BLE001 -- raised where the caller takes the result
                future.set_exception(exc)


def take_weights(learner: Any, client: WeightsClient, weights: Weights | None) -> None:
    """Set ``learner`` to the pushed weights that are newer than those ``client`` holds."""
    online, target = client.offer(weights)
    if online is not None or target is not None:
        learner.set_weights(online if online is not None else learner.get_weights(), target)
