"""The update channel: how a parameter server's weights reach its workers and their updates come
back (sync_ps, async_ps). One interface, one implementation per transport, one file each:

    ray_calls.py       a Ray call per worker per update, the weights as its argument (any cluster)
    shared_memory.py   the workers run their own loops and meet the server in shared memory
                       (every worker on the server's host: no Ray call per update)

    server (runtime/parameter_server.py)        channel                     worker i
      publish(learner)  ---- the newest weights (online, target) ------------>  takes them
      poll(wait_s)      <--- Push(worker, vector, publication, based_on, k) --  its gradient or model
      events()          <--- WorkerReport (episodes, update metrics, times), WorkerDied
      replaced(i)       ---- a new process holds worker i's place ---------->
      close(drain)

A channel never sees the conductor: it returns pushes and events, and the parameter server hands
the events on (counts them, replaces the dead). The topology never sees which transport runs.
Adding a transport: its file, implementing ``UpdateChannel``, and its registration: an entry in
``transports.CHANNELS`` and its name among ``<topology>.transport``'s values (config.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from distdqn.core.records import Episodes, UpdateStats

if TYPE_CHECKING:   # annotations only: the package stays light for the processes that attach to a segment
    from distdqn.config import Config
    from distdqn.core.learner import GradientLearner


@dataclass(frozen=True)
class Exchange:
    """What a parameter server and its workers exchange, from the topology's config section:
    ``sync`` (a round: each push from the newest publication, sync_ps) or not (async_ps);
    ``mode`` gradient (one gradient per push) or model / parameter (``local_steps`` local updates,
    the model pushed); async's gradient form takes fresh weights every ``pull_period`` pushes."""

    sync: bool
    mode: str
    local_steps: int
    pull_period: int = 1

    @property
    def pushes_gradients(self) -> bool:
        return self.mode == "gradient"

    @classmethod
    def of(cls, cfg: Config) -> Exchange:
        if cfg.topology == "sync_ps":
            s = cfg.sync_ps
            return cls(True, s.mode, s.local_steps)
        a = cfg.async_ps
        return cls(False, a.mode, a.local_steps, a.pull_period if a.mode == "gradient" else 1)


@dataclass
class Push:
    """One worker's update, as the server takes it: a flat vector in the learner's layout (a
    gradient, or a model after ``num_updates`` local updates; None: no batch was owed), computed
    from publication ``publication`` of the weights, whose learner version was ``based_on``. The
    vector may be a view the channel reuses once that worker pushes again."""

    worker: int
    vector: np.ndarray | None
    publication: int
    based_on: int
    num_updates: int


@dataclass
class Round:
    """A synchronous round's pushes (one per worker that answered in time) and the workers left out."""

    pushes: list[Push]
    missed: int

    @property
    def with_updates(self) -> list[Push]:
        return [p for p in self.pushes if p.vector is not None and p.num_updates]

    def mean(self) -> np.ndarray:
        """The mean of the pushed vectors (those that hold updates)."""
        return np.mean([p.vector for p in self.with_updates], axis=0)

    @property
    def most_updates(self) -> int:
        return max((p.num_updates for p in self.pushes), default=0)


@dataclass
class WorkerReport:
    """What a worker tells beside its pushes: episodes ended, its updates' metrics, and its time
    working and waiting (for weights, or for the server to take its push)."""

    worker: int
    episodes: Episodes = field(default_factory=Episodes)
    updates: UpdateStats = field(default_factory=UpdateStats)
    busy_s: float = 0.0
    wait_s: float = 0.0
    non_finite_steps: int = 0   # env steps skipped for a NaN or infinite observation or reward


@dataclass
class WorkerDied:
    worker: int


WorkerEvent = WorkerReport | WorkerDied


class UpdateChannel(Protocol):
    """The server's side of one transport to its workers."""

    name: str   # its value of ``<topology>.transport``

    @property
    def publication(self) -> int:
        """Publications so far (each sync_ps round is one)."""
        ...

    @property
    def env_steps(self) -> int:
        """Env steps the workers have collected since the channel opened, as the server knows them."""
        ...

    def publish(self, learner: GradientLearner) -> None:
        """Make the learner's current weights the newest; the workers take them."""
        ...

    def allow_collect(self, allowed: bool) -> None:
        """Whether workers may collect more env steps (False: the budget is spent; they use up the
        batches they are owed)."""
        ...

    def poll(self, wait_s: float) -> list[Push]:
        """The pushes that have arrived, at most one per worker, waiting up to ``wait_s`` for the first."""
        ...

    def events(self) -> list[WorkerEvent]:
        """What the workers reported, and which died, since the last call."""
        ...

    def replaced(self, worker: int) -> None:
        """A new process has taken the place of ``worker``, which died: it holds nothing yet."""
        ...

    def close(self, drain: bool) -> list[WorkerEvent]:
        """Stop the workers' side; ``drain`` (a normal end): wait (bounded) for their last reports,
        returned. Nothing of the channel is left (no segment, no call in flight)."""
        ...
