"""Ray actors that host core components: a replay server, a learner, and experience actors.

They are thin: each wraps one core object and exposes calls that do a bounded amount of work and
return, so the driver (a topology's ``run``) decides who does what and when, and can checkpoint,
restart or stop them between calls. Every wait inside them has a timeout.

Weights travel as a dict of NumPy arrays put once into the object store; callers pass the
reference inside a list (a "box") so that Ray does not resolve it unless the receiver needs it.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
import torch

from distdqn.config import Config
from distdqn.core.policy import initial_priorities
from distdqn.core.ratelimit import RateLimitedReplay, RateLimiter
from distdqn.core.transitions import Batch, Transitions
from distdqn.envs import EnvInfo
from distdqn.runtime import affinity
from distdqn.runtime import components as build

SAMPLE_WAIT_S = 5.0   # a replay call waits at most this long for the rate limiter, then returns empty
PUBLISH_WAIT_S = 60.0  # a put of the learner's weights into the object store, at most


def set_worker_threads(cpus: float, override: int | None = None) -> None:
    """Torch threads for this process: ``override`` (train.torch_threads) or its CPU share."""
    torch.set_num_threads(override or max(1, int(cpus) or 1))


def process_identity(**extra: Any) -> dict[str, Any]:
    """Which process and node this is, and the CPUs it may run on (for processes.json)."""
    cpus = affinity.allowed_cpus()
    return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
            "cpus": sorted(cpus) if cpus is not None else None, **extra}


Isolation = dict[str, Any]
"""The cores apex's learner took for itself: {"node_id", "pid", "cpus"} (``LearnerWorker.isolate``)."""


def keep_off(isolation: Isolation | None) -> set[int] | None:
    """On the learner's node, run on every CPU this process may use except the learner's; returns
    those CPUs (None: not on the learner's node, or nothing left to run on)."""
    if isolation is None or isolation["node_id"] != ray.get_runtime_context().get_node_id():
        return None
    rest = (affinity.allowed_cpus() or set()) - set(isolation["cpus"])
    if not rest:
        return None
    affinity.pin(rest)
    return rest


def keep_driver_off(isolation: Isolation | None, started_here: bool) -> set[int] | None:
    """``keep_off`` for the driver, and for the Ray instance it started (its daemons and idle
    workers: every process below the driver but the learner's). Returns the driver's CPUs
    before, to restore when the run ends (None: nothing was changed)."""
    before = affinity.allowed_cpus()
    rest = keep_off(isolation)
    if rest is None:
        return None
    for pid in affinity.descendants(os.getpid()) if started_here else []:
        if pid != isolation["pid"]:
            affinity.pin(rest, pid)
    return before


def blocks_per_insert(cfg: Config) -> int:
    """apex.blocks_per_insert, or the blocks the learner's ``weight_sync_period`` updates consume."""
    if cfg.apex.blocks_per_insert is not None:
        return cfg.apex.blocks_per_insert
    block_env_steps = cfg.train.steps_per_collect * cfg.env.num_envs
    return max(1, round(cfg.apex.weight_sync_period / (cfg.train.replay_ratio * block_env_steps)))


def _gated_replay(cfg: Config, info: EnvInfo, seed: int) -> RateLimitedReplay:
    return RateLimitedReplay(build.build_replay(cfg, info, seed),
                             RateLimiter(cfg.train.replay_ratio, cfg.learning_starts_env_steps,
                                         cfg.apex.slack_updates))


# A replay host (ReplayServer, or LearnerWorker with apex.replay_host=learner) serves these calls;
# they run on threads of their own ("replay" group), beside the learner's updates.
REPLAY_CALLS = 16

InsertAnswer = tuple[bool, int, list]
"""A replay host's answer to an insert: (accepted, version, [ref]) of the newest published weights
([] before the first publication)."""


class _ReplayHost:
    """The calls every replay host serves (ReplayServer; LearnerWorker with apex.replay_host=learner),
    on threads of the "replay" group: ``gated`` is its RateLimitedReplay, ``newest`` the learner's
    newest published weights (version, [ref])."""

    gated: RateLimitedReplay
    newest: tuple[int, list]

    @ray.method(concurrency_group="replay")
    def add(self, transitions: Transitions, priorities: np.ndarray | None, env_steps: int) -> InsertAnswer:
        """Insert once the rate limiter allows it (accepted False, nothing inserted, after
        SAMPLE_WAIT_S); the answer carries the newest weights the learner published."""
        return self.gated.add(transitions, priorities, env_steps, SAMPLE_WAIT_S), *self.newest

    @ray.method(concurrency_group="replay")
    def replay_stats(self) -> dict[str, Any]:
        return self.gated.stats()

    @ray.method(concurrency_group="replay")
    def replay_state(self) -> dict[str, Any]:
        return self.gated.state_dict()

    @ray.method(concurrency_group="replay")
    def load_replay_state(self, state: dict[str, Any]) -> None:
        self.gated.load_state_dict(state)


@ray.remote(concurrency_groups={"replay": REPLAY_CALLS})
class ReplayServer(_ReplayHost):
    """The central replay in a process of its own (apex.replay_host=process): actors' inserts and
    the learner's samples run on threads, and wait (bounded) on each other through the rate limiter."""

    def __init__(self, cfg: Config, info: EnvInfo, seed: int):
        self.gated = _gated_replay(cfg, info, seed)
        self.newest = (-1, [])

    def keep_off(self, isolation: Isolation | None) -> None:
        """Keep off the learner's cores (the server is built before the learner takes them)."""
        keep_off(isolation)

    @ray.method(concurrency_group="replay")
    def publish(self, version: int, weights_box: list) -> None:
        """The learner's newest weights, handed to actors with their next insert's answer."""
        self.newest = (version, weights_box)

    @ray.method(concurrency_group="replay")
    def sample(self, num_batches: int, batch_size: int, beta: float) -> Batch | None:
        """``num_batches`` batches, stacked into one Batch (8 arrays to send, not 8 per batch), once
        the rate limiter allows them; None after SAMPLE_WAIT_S."""
        return self.gated.sample(num_batches, batch_size, beta, SAMPLE_WAIT_S)

    @ray.method(concurrency_group="replay")
    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        self.gated.update_priorities(indices, td_errors)

    def identity(self) -> dict[str, Any]:
        return process_identity()


@ray.remote(concurrency_groups={"replay": REPLAY_CALLS})
class LearnerWorker(_ReplayHost):
    """A DQNLearner that trains in chunks of updates, from the replay it hosts (``replay`` None:
    apex.replay_host=learner, the actors insert into this process) or from a ReplayServer.

    Training, weights and learner state run one at a time (the default group); the replay's calls
    run on threads of the "replay" group beside them (the replay has its own lock; torch releases
    the GIL during an update)."""

    def __init__(self, cfg: Config, info: EnvInfo, replay: Any, seed: int):
        set_worker_threads(cfg.apex.learner_cpus)
        torch.manual_seed(seed)
        self.cfg = cfg
        self.learner = build.build_learner(cfg, info)
        self.gated = _gated_replay(cfg, info, seed - 1) if replay is None else None   # hosted here
        self.replay = replay
        self.beta = build.build_beta_schedule(cfg)
        self._prefetch = None
        self._published_at = -1
        self.newest = (-1, [])   # (version, [ref]) of the last weights published
        # Publications during training are put into the object store by a thread of their own:
        # a put waits a millisecond or so for the node's object store (its Raylet runs on the
        # other cores), which the training thread would otherwise spend idle every weight_sync_period.
        self._publisher = ThreadPoolExecutor(1, thread_name_prefix="publisher")
        self._publisher.submit(lambda: None).result()   # its thread exists now: isolate() moves it off the training core
        self._publishing: Future | None = None

    def isolate(self, num_cpus: int) -> Isolation | None:
        """The last ``num_cpus`` CPUs of this node for the thread that trains (the default group's
        only thread: this call runs on it); None: none to spare."""
        cpus = affinity.claim_last(num_cpus)
        if cpus is None:
            return None
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "cpus": cpus}

    # ---- learning ----
    def weights(self) -> tuple[int, list]:
        """(learner updates, [ref]) of the current online weights, put once into the object store;
        also what the replay answers actors' inserts with from now on."""
        self._wait_for_publication()
        return self._publish(self.learner.updates, self.learner.get_weights())

    def _publish(self, version: int, weights: dict[str, np.ndarray]) -> tuple[int, list]:
        newest = (version, [ray.put(weights)])
        if version > self.newest[0]:
            self.newest = newest
        if self.replay is not None:
            self.replay.publish.remote(*newest)
        return newest

    def _publish_in_background(self) -> None:
        """A copy of the weights now, put into the object store by the publisher thread; one
        publication at a time (the previous one, if not done, is waited for)."""
        self._wait_for_publication()
        self._publishing = self._publisher.submit(self._publish, self.learner.updates, self.learner.get_weights())

    def _wait_for_publication(self) -> None:
        if self._publishing is not None:
            self._publishing.result(timeout=PUBLISH_WAIT_S)   # raises what the put raised
            self._publishing = None

    def _sample(self, beta: float) -> Batch | None:
        """The next group of batches: drawn here from the hosted replay, or the one the replay
        server prepared while the previous group trained (and the next one asked for)."""
        num, batch_size = self.cfg.apex.batches_per_sample, self.cfg.learner.batch_size
        if self.gated is not None:
            return self.gated.sample(num, batch_size, beta, SAMPLE_WAIT_S)
        if self._prefetch is None:
            self._prefetch = self.replay.sample.remote(num, batch_size, beta)
        stacked = ray.get(self._prefetch, timeout=SAMPLE_WAIT_S + 30)
        self._prefetch = self.replay.sample.remote(num, batch_size, beta)
        return stacked

    def _return_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        if self.gated is not None:
            self.gated.update_priorities(indices, td_errors)
        else:
            self.replay.update_priorities.remote(indices, td_errors)

    def train(self, num_updates: int, env_steps: int) -> dict[str, Any]:
        """Up to ``num_updates`` updates; returns metric sums, and new weights every sync period."""
        cfg = self.cfg.apex
        sums: dict[str, float] = {}
        done, start, waited, stepping = 0, time.perf_counter(), 0.0, 0.0
        published_before = self.newest[0]
        beta = self.beta(env_steps)
        while done < num_updates:
            t = time.perf_counter()
            stacked = self._sample(beta)
            waited += time.perf_counter() - t
            if stacked is None:
                break  # the rate limiter says wait for actors: report back to the driver
            indices, priorities = [], []
            t = time.perf_counter()
            for batch in stacked.split(cfg.batches_per_sample):
                result = self.learner.step(batch)
                indices.append(batch.indices)
                priorities.append(result.priorities)
                for k, v in result.metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                done += 1
            stepping += time.perf_counter() - t
            if self.cfg.replay.prioritized:  # one message (or one lock) for the whole group
                self._return_priorities(np.concatenate(indices), np.concatenate(priorities))
            if self.learner.updates - self._published_at >= cfg.weight_sync_period:
                self._published_at = self.learner.updates
                self._publish_in_background()   # actors get it with their next insert's answer
        out: dict[str, Any] = {"updates": done, "learner_updates": self.learner.updates, "sums": sums,
                               "busy_s": time.perf_counter() - start - waited, "wait_s": waited,
                               "step_s": stepping}
        if self.newest[0] > published_before:   # the newest publication that is in the object store
            out["weights"] = self.newest
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)

    def identity(self) -> dict[str, Any]:
        return process_identity()


@ray.remote
class ExperienceActor:
    """An Actor (vector env + epsilon-greedy policy) that sends its transitions, with initial
    priorities, straight to the replay's host (the replay server, or the learner hosting it)."""

    def __init__(self, cfg: Config, info: EnvInfo, replay: Any, epsilons: np.ndarray, seed: int,
                 isolation: Isolation | None = None):
        keep_off(isolation)   # the driver passes LearnerWorker.isolate's reference: Ray resolves it first
        set_worker_threads(cfg.apex.actor_cpus)
        self.cfg = cfg
        network = build.build_network(cfg, info)
        weights = {k: v.numpy() for k, v in network.state_dict().items()}
        self.actor = build.build_actor(cfg, info, weights, seed)
        self.replay = replay
        self.epsilons = np.asarray(epsilons, dtype=np.float64)
        self.version = -1
        self.prioritized = cfg.replay.prioritized
        self._pending: tuple | None = None      # the insert in flight: its arguments, its reference,
        self._pending_ref: Any = None           # and the weights version its data was collected with
        self._pending_version = -1
        self._lags: list[int] = []

    def collect(self, version: int, weights_box: list, num_blocks: int) -> dict[str, Any]:
        """Collect ``num_blocks`` blocks, sending them to the replay every ``apex.blocks_per_insert``
        blocks. An insert is not waited for: the next one waits for it first, so collection
        overlaps the replay's work, at most one insert is in flight, and the replay's rate limiter
        holds the actor back while the learner is behind (back-pressure). Each insert's answer
        carries the newest published weights, taken at once: actors stay as fresh as the learner's
        publications without a message of their own. The driver's offer (``version``,
        ``weights_box``) is taken too when it is newer."""
        self._adopt(version, weights_box)
        start, waits, steps = time.perf_counter(), 0, 0
        returns, lengths, self._lags = [], [], []
        per_insert = blocks_per_insert(self.cfg)
        for first in range(0, num_blocks, per_insert):
            rollouts = [self.actor.collect(self.cfg.train.steps_per_collect, self.epsilons)
                        for _ in range(min(per_insert, num_blocks - first))]
            t = Transitions.concatenate([r.transitions for r in rollouts])
            env_steps = sum(r.env_steps for r in rollouts)
            priorities = (initial_priorities(self.actor.policy, t.obs, t.action, t.reward, t.next_obs,
                                             t.terminated, t.discount) if self.prioritized else None)
            waits += self.settle()
            self._pending = (t, priorities, env_steps)
            self._pending_ref = self.replay.add.remote(t, priorities, env_steps)
            self._pending_version = self.version
            steps += env_steps
            returns += [r.episode_returns for r in rollouts]
            lengths += [r.episode_lengths for r in rollouts]
        return {"env_steps": steps, "episode_returns": np.concatenate(returns),
                "episode_lengths": np.concatenate(lengths), "version": self.version,
                # learner updates between the weights that acted and the newest published when
                # the data reached the replay (per insert answered in this call)
                "weight_lag": float(np.mean(self._lags)) if self._lags else None,
                "insert_waits": waits, "wall_s": time.perf_counter() - start}

    def _adopt(self, version: int, weights_box: list) -> None:
        if version > self.version and weights_box:
            self.actor.policy.set_weights(ray.get(weights_box[0], timeout=60))
            self.version = version

    def settle(self) -> int:
        """Wait until the insert in flight is accepted, sending it again each time the replay
        refuses it (its rate limiter waited SAMPLE_WAIT_S for the learner); the number of refusals.
        Raises TimeoutError after ``apex.stall_timeout_s`` of refusals."""
        waits, start = 0, time.perf_counter()
        while self._pending_ref is not None:
            accepted, version, weights_box = ray.get(self._pending_ref, timeout=SAMPLE_WAIT_S + 30)
            if accepted and version >= 0:
                self._lags.append(version - self._pending_version)
            self._adopt(version, weights_box)
            if accepted:
                break
            waits += 1
            if time.perf_counter() - start > self.cfg.apex.stall_timeout_s:
                raise TimeoutError(f"the replay refused inserts for {self.cfg.apex.stall_timeout_s:.0f} s")
            self._pending_ref = self.replay.add.remote(*self._pending)
        self._pending, self._pending_ref = None, None
        return waits

    def identity(self) -> dict[str, Any]:
        return process_identity()


# --------------------------------------------------------------------------------------------
# Data-parallel workers (sync_ps, async_ps, allreduce): each hosts a Replica.

WeightsBox = tuple[int, list, int, list]
"""(online version, [ref to online weights], target version, [ref to target weights]): what a
server broadcasts. A list is empty when the receiver already holds that version; the reference is
boxed in a list so that Ray passes it as is and the worker fetches it only when needed."""


def _unbox(box: list) -> Any:
    """The boxed weights: fetched from the object store (what servers send), or as they are (the
    weights themselves: benchmarks/ps_round.py compares the two)."""
    item = box[0]
    return ray.get(item, timeout=60) if isinstance(item, ray.ObjectRef) else item


class WeightsHolder:
    """The server versions of the weights a replica holds, and adopting newer ones from a box."""

    def __init__(self):
        self.version, self.target_version = -1, -1

    def take(self, replica: Any, box: WeightsBox | None) -> None:
        if box is None:
            return
        version, online_box, target_version, target_box = box
        if version == self.version and target_version == self.target_version:
            return
        online = _unbox(online_box) if online_box else replica.learner.get_weights()
        target = _unbox(target_box) if target_box else None
        replica.set_weights(online, target)
        self.version, self.target_version = version, target_version


@ray.remote
class ReplicaWorker:
    """A Replica (vector env, local replay, learner replica) behind bounded calls."""

    def __init__(self, cfg: Config, info: EnvInfo, index: int, num_replicas: int, seed: int, cpus: float,
                 owns_target: bool):
        from distdqn.runtime.replica import Replica
        set_worker_threads(cpus, cfg.train.torch_threads)
        self.replica = Replica(cfg, info, index, num_replicas, seed)
        self.replica.learner.owns_target = owns_target
        self.index = index
        self.held = WeightsHolder()
        self._group = None

    def _take(self, box: WeightsBox | None) -> None:
        """Adopt the server's weights if they are newer than this replica's."""
        self.held.take(self.replica, box)

    def gradient(self, box: WeightsBox | None, allow_collect: bool = True) -> dict[str, Any]:
        """One gradient on the next owed batch, computed at the weights of ``box`` (or the last taken)."""
        self._take(box)
        grads, metrics = self.replica.gradient(allow_collect)
        return {"grads": grads, "version": self.held.version, "metrics": metrics, **self.replica.drain()}

    def local_steps(self, box: WeightsBox | None, num_updates: int, allow_collect: bool = True) -> dict[str, Any]:
        """``num_updates`` local learner updates from the weights of ``box``; returns the new weights."""
        self._take(box)
        done, sums = self.replica.train(num_updates, allow_collect=allow_collect)
        return {"weights": self.replica.learner.get_weights(), "updates": done, "version": self.held.version,
                "sums": sums, **self.replica.drain()}

    def set_weights(self, online: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> None:
        self.replica.set_weights(online, target)

    # ---- all-reduce: a torch.distributed process group across the workers ----
    def rendezvous_address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the group's TCP store (as Ray Train does)."""
        import socket
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def join_group(self, address: str, port: int, rank: int, world_size: int, backend: str,
                   timeout_s: float) -> str:
        import datetime

        import torch.distributed as dist
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() and self.replica.learner.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
        self._group = dist.group.WORLD
        return backend

    def _allreduce_mean(self, grads: list[torch.Tensor]) -> None:
        """Average the clipped gradient over all ranks, in place (the learner's gradient is one
        flat buffer: one all-reduce)."""
        import torch.distributed as dist
        for g in grads:
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
            g /= dist.get_world_size()

    def train_allreduce(self, num_updates: int, publish: bool) -> dict[str, Any]:
        """``num_updates`` synchronized updates: every rank calls this with the same count."""
        start = time.perf_counter()
        done, sums = self.replica.train(num_updates, reduce_grads=self._allreduce_mean)
        out = {"updates": done, "learner_updates": self.replica.learner.updates, "sums": sums,
               "busy_s": time.perf_counter() - start, **self.replica.drain()}
        if publish:
            out["weights"] = [ray.put(self.replica.learner.get_weights())]
        return out

    def weights_hash(self) -> str:
        """A hash of the online and target parameters (replicas in step have equal hashes)."""
        import hashlib
        h = hashlib.sha256()
        for weights in (self.replica.learner.get_weights(), self.replica.learner.get_target_weights()):
            for key in sorted(weights):
                h.update(key.encode())
                h.update(np.ascontiguousarray(weights[key]).tobytes())
        return h.hexdigest()[:16]

    def leave_group(self) -> None:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()

    # ---- state ----
    def state_dict(self, with_replay: bool) -> dict[str, Any]:
        return self.replica.state_dict(with_replay)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replica.load_state_dict(state)
        self.held = WeightsHolder()

    def identity(self) -> dict[str, Any]:
        return process_identity(index=self.index)
