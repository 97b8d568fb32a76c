"""Everything that crosses a process boundary, typed: what each role reports, what the weights
channel carries, what a federated client may send, the run's counters, and the one checkpoint
schema every topology writes. No Ray here (a boxed object-store reference is just a list).

    channel   message                 from -> to
    weights   Weights                 learner / server -> actors, workers, the conductor
    data      Transitions + InsertResult   actor -> replay -> actor (accepted or not, nothing else)
              ShardDraw, ShardStatus  replay shard -> apex learner (draws at fractions of its mass)
    control   ActorReport             experience actor -> conductor
              ReplayStats             replay (or shard) -> conductor
              LearnerReport           apex learner -> conductor
              PushReport              parameter-server worker -> server (transport ray)
              ServeReport             parameter-server worker -> server (transport shm: its loop)
              RankReport              all-reduce rank -> conductor
              ClientMessage           federated client -> server (checked by ``check_message``)
    state     RunCounters, RunState   conductor -> checkpoint -> conductor
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from distdqn.core.records import Experience, UpdateStats
from distdqn.core.transitions import Batch
from distdqn.errors import CheckpointError

# ---- the weights channel ----


@dataclass(frozen=True)
class Weights:
    """A publication: the online weights at ``version`` (learner updates) as a boxed object-store
    reference ``[ref]``, put once and read by every receiver, and the target network's likewise
    (servers that keep the target network send it; ``target_version`` -1: none). A box is empty
    when the receiver already holds that version (nothing travels)."""

    version: int
    box: list = field(default_factory=list)
    target_version: int = -1
    target_box: list = field(default_factory=list)


NO_WEIGHTS = Weights(-1)


# ---- the data channel ----


@dataclass(frozen=True)
class InsertResult:
    """A replay's answer to an insert: accepted, or refused by the rate limiter (send it again)."""

    accepted: bool


@dataclass(frozen=True)
class ShardStatus:
    """Where a replay shard stands, as a learner needs it to split draws by mass and to judge the
    replay ratio over every shard: its mass (sum of scaled priorities, or its size for uniform
    replay), smallest scaled priority, size, the env steps inserted into it, and the updates a
    learner last told it of."""

    mass: float
    min_leaf: float
    size: int
    inserted_env_steps: int
    updates: int


NO_SHARD = ShardStatus(0.0, float("inf"), 0, 0, 0)


@dataclass
class ShardDraw:
    """A shard's answer to a learner's draw: the transitions (None if none were asked for), their
    scaled priorities, and its status after the draw."""

    batch: Batch | None
    leaves: np.ndarray
    status: ShardStatus


# ---- reports on the control channel ----


@dataclass(frozen=True)
class ReplayStats:
    """A replay's counts for the log and the summary (``row``); ``total`` sums a run's shards."""

    size: int
    inserted_transitions: int
    inserted_env_steps: int
    sampled_batches: int            # learner updates sampled (a shard: as the learners last told it)
    insert_wait_s: float            # inserts waiting for the learner (summed over threads)
    sample_wait_s: float            # samples waiting for the actors (the one-replay path)

    @classmethod
    def total(cls, parts: list[ReplayStats]) -> ReplayStats:
        """The run's replay over all its shards (the updates are every shard's view of the same count)."""
        return cls(sum(p.size for p in parts), sum(p.inserted_transitions for p in parts),
                   sum(p.inserted_env_steps for p in parts), max(p.sampled_batches for p in parts),
                   sum(p.insert_wait_s for p in parts), sum(p.sample_wait_s for p in parts))

    def row(self) -> dict[str, float]:
        """The metrics row's fields (their names as apex has always logged them)."""
        return {"replay_size": self.size, "inserted_transitions": self.inserted_transitions,
                "inserted_env_steps": self.inserted_env_steps, "sampled_batches": self.sampled_batches,
                "replay_insert_wait_s": self.insert_wait_s, "replay_sample_wait_s": self.sample_wait_s}




@dataclass
class ActorReport:
    """An experience actor's call: what it collected and sent to the replay."""

    experience: Experience
    insert_refusals: int            # inserts the rate limiter refused (and the actor sent again)
    weight_lag: float | None        # mean learner updates between the weights that acted and the
                                    # newest the actor had seen when each insert was accepted
    version: int                    # the weights version it acts with now
    accepted_env_steps: int = 0     # env steps of its inserts the replay accepted during the call
                                    # (an insert sent in one call may be accepted in the next)


@dataclass
class LearnerReport:
    """An apex learner's call of up to ``apex.updates_per_call`` updates."""

    updates: UpdateStats
    learner_updates: int            # the learner's total so far
    busy_s: float                   # the call's time, less waiting for the rate limiter
    wait_s: float
    step_s: float                   # in learner updates alone
    weights: Weights | None         # the newest publication in the object store, if newer than
                                    # the previous call's
    exchange_s: float = 0.0         # of busy_s and wait_s, in the learner group's exchanges


@dataclass
class LearnerTimes:
    """An apex learner's LearnerReports summed over the run, for the log (learner 0's: a group's
    learners take every update together)."""

    busy_s: float = 0.0
    step_s: float = 0.0
    wait_s: float = 0.0
    exchange_s: float = 0.0

    def add(self, report: LearnerReport) -> None:
        self.busy_s += report.busy_s
        self.step_s += report.step_s
        self.wait_s += report.wait_s
        self.exchange_s += report.exchange_s

    def row(self) -> dict[str, float]:
        return {"learner_busy_s": self.busy_s, "learner_step_s": self.step_s, "learner_wait_s": self.wait_s,
                "learner_exchange_s": self.exchange_s}


@dataclass
class PushReport:
    """A parameter-server worker's call (transport ray): its update, one flat vector in the
    learner's layout (a gradient, or its model after ``num_updates`` local updates; None: no batch
    was owed), made from the weights of ``based_on`` (the server's version)."""

    vector: np.ndarray | None
    based_on: int
    num_updates: int
    updates: UpdateStats
    experience: Experience
    busy_s: float                   # the call's time in the worker


@dataclass
class ServeReport:
    """A parameter-server worker's stretch of its own loop on the shared-memory channel
    (``transport: shm``): the pushes themselves travel in shared memory."""

    updates: UpdateStats
    experience: Experience
    pushes: int
    busy_s: float                   # collecting, sampling, computing gradients or local updates
    wait_s: float                   # waiting for new weights (a round) or for its slot


@dataclass
class RankReport:
    """An all-reduce rank's call of synchronized updates."""

    updates: UpdateStats
    learner_updates: int
    busy_s: float
    experience: Experience
    exchange_wait_s: float = float("nan")   # of busy_s, waiting for the other ranks (shm backend)
    collected_at: list[int] = field(default_factory=list)   # the updates before which it collected


# ---- what a federated client may send ----


@dataclass
class ClientMessage:
    """All a federated client sends the server: its update theta_k - theta (clipped and noised
    under DP), the number of transitions it holds (n_k of FedAvg), and scalars: how much it
    collected and trained, and its episodes as a count and means. Never transitions,
    observations, episode-by-episode returns or replay contents."""

    update: dict[str, np.ndarray]
    base_version: int               # the global model's version the update was made from (its staleness)
    num_samples: int
    env_steps: int
    local_updates: int
    episodes: int
    episode_return_mean: float
    episode_length_mean: float
    metrics: dict[str, float]       # means over the local updates: loss, q_mean, grad_norm, update_norm


def check_message(message: Any, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """None if ``message`` is a well-formed ClientMessage for parameters of ``shapes``, else why not."""
    if type(message) is not ClientMessage:
        return f"type {type(message).__name__}, not ClientMessage"
    if set(vars(message)) != {f.name for f in fields(ClientMessage)}:
        return f"fields {sorted(vars(message))}"
    update = message.update
    if not isinstance(update, dict) or set(update) != set(shapes):
        return "update does not name the model's parameters"
    for name, value in update.items():
        if not isinstance(value, np.ndarray) or value.shape != shapes[name]:
            return f"update[{name}] is not an array of shape {shapes[name]}"
    for name in ("base_version", "num_samples", "env_steps", "local_updates", "episodes"):
        value = getattr(message, name)
        if type(value) is not int or value < 0:
            return f"{name} is not a non-negative int"
    if not all(type(getattr(message, n)) is float for n in ("episode_return_mean", "episode_length_mean")):
        return "episode means are not floats"
    metrics = message.metrics
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and type(v) in (int, float)
                                                for k, v in metrics.items()):
        return "metrics are not scalars"
    return None


# ---- the run's state ----


@dataclass
class RunCounters:
    """What a run has done so far; kept in checkpoints and reported in the summary. A topology
    with counts of its own subclasses it (in its own file)."""

    env_steps: int = 0
    learner_updates: int = 0
    restarts: int = 0               # processes of the run's restartable role that died and were replaced
    non_finite_steps: int = 0       # env steps skipped for a NaN or infinite observation or reward
    non_finite_updates: int = 0     # updates a server (single: the learner) did not apply for a NaN or infinity

    def summary_fields(self) -> dict[str, Any]:
        """The summary's part: a topology's own counts (the run's totals are reported apart)."""
        return {k: v for k, v in asdict(self).items() if k not in ("env_steps", "learner_updates", "restarts")}


@dataclass
class RunState:
    """The one checkpoint schema of every topology: the (one logical) learner, the counters, and
    where a topology has them, every replica's state (env, actor, local replay, local learner;
    None for a replica that did not answer), a central replay with its rate limiter (or, sharded,
    every shard's), and a federated server's optimizer (its moments)."""

    learner: dict[str, Any]
    counters: RunCounters
    replicas: list[dict[str, Any] | None] | None = None
    replay: dict[str, Any] | None = None
    server_optimizer: dict[str, Any] | None = None
    replay_shards: list[dict[str, Any]] | None = None   # apex.replay_shards > 1: each shard, in order

    def components(self) -> dict[str, Any]:
        """The checkpoint's components (``counters`` as a plain dict; absent parts left out)."""
        out: dict[str, Any] = {"learner": self.learner, "counters": asdict(self.counters)}
        for name in ("replicas", "replay", "server_optimizer", "replay_shards"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_components(cls, components: dict[str, Any], counters: type[RunCounters]) -> RunState:
        """The state read back from a checkpoint's components; a one-line error if they do not fit."""
        try:
            return cls(components["learner"], counters(**components["counters"]),
                       components.get("replicas"), components.get("replay"), components.get("server_optimizer"),
                       components.get("replay_shards"))
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"the checkpoint does not hold a {counters.__name__} run state "
                                  f"({type(exc).__name__}: {exc})") from None
