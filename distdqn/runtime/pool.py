"""WorkerPool: the N ReplicaWorker actors of a data-parallel topology, started on the cluster (in a
placement group when they must run together), restarted when one dies, and asked for their state
at checkpoints. Every wait has a timeout."""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from distdqn.config import Config
from distdqn.envs import EnvInfo
from distdqn.runtime.cluster import ClusterError
from distdqn.runtime.replica import replica_seed
from distdqn.runtime.workers import ReplicaWorker

MAX_RESTARTS_PER_WORKER = 10


class WorkerPool:
    """``actor_class`` (ReplicaWorker, or FederatedClient) is constructed as
    ``(cfg_i, info, index, num_workers, seed, cpus, *extra_args)``, with cfg_i worker i's config
    (``Config.for_client``: a federated client's environment variant)."""

    def __init__(self, cfg: Config, info: EnvInfo, actor_class: Any = ReplicaWorker, extra_args: tuple = (),
                 placement: bool = False, timeout_s: float = 120.0):
        w = cfg.workers
        self.cfg, self.info, self.timeout_s = cfg, info, timeout_s
        self.actor_class, self.extra_args = actor_class, extra_args
        self.num_workers = w.num_workers
        self.restarts = 0
        self.generations = [0] * w.num_workers
        self.placement_group = None
        if placement:
            from ray.util.placement_group import placement_group
            bundle = {"CPU": w.cpus, **({"GPU": w.gpus} if w.gpus else {})}
            self.placement_group = placement_group([bundle] * w.num_workers, strategy="PACK")
            ready, _ = ray.wait([self.placement_group.ready()], timeout=timeout_s)
            if not ready:
                raise ClusterError(f"the cluster could not place {w.num_workers} workers x {bundle} "
                                   f"together within {timeout_s:.0f} s")
        self.handles = [self._start(i) for i in range(w.num_workers)]

    def _start(self, index: int):
        w = self.cfg.workers
        options: dict[str, Any] = {"num_cpus": w.cpus, "num_gpus": w.gpus}
        if self.placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.placement_group, placement_group_bundle_index=index)
        else:
            options["scheduling_strategy"] = "SPREAD"
        seed = replica_seed(self.cfg.seed, index, self.generations[index])
        return self.actor_class.options(**options).remote(self.cfg.for_client(index), self.info, index,
                                                          self.num_workers, seed, w.cpus, *self.extra_args)

    def restart(self, index: int) -> None:
        """Replace worker ``index`` (which died) by a fresh one with a new seed."""
        if self.generations[index] >= MAX_RESTARTS_PER_WORKER:
            raise ClusterError(f"worker {index} died {MAX_RESTARTS_PER_WORKER + 1} times; giving up "
                               f"(see the Ray worker logs for why)")
        ray.kill(self.handles[index], no_restart=True)
        self.restarts += 1
        self.generations[index] += 1
        self.handles[index] = self._start(index)

    def result(self, ref: Any) -> Any:
        """The value of a finished call, or None if its worker died (RayActorError)."""
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except RayActorError:
            return None

    def identities(self) -> dict[str, Any]:
        """{worker<i>: pid, node} of every worker; waits for them to be constructed."""
        refs = [h.identity.remote() for h in self.handles]
        out = {}
        for i, ref in enumerate(refs):
            try:
                out[f"worker{i}"] = ray.get(ref, timeout=self.timeout_s)
            except (RayError, GetTimeoutError):
                out[f"worker{i}"] = None
        return out

    def state_dicts(self, with_replay: bool) -> list[dict[str, Any] | None]:
        """Every worker's state; None for a worker that is dead or does not answer in time (a
        checkpoint is still written, and that worker starts afresh when the run is resumed)."""
        refs = [h.state_dict.remote(with_replay) for h in self.handles]
        states: list[dict[str, Any] | None] = []
        for ref in refs:
            try:
                states.append(ray.get(ref, timeout=self.timeout_s))
            except (RayError, GetTimeoutError):
                states.append(None)
        return states

    def load_state_dicts(self, states: list[dict[str, Any]]) -> None:
        if len(states) != self.num_workers:
            from distdqn.errors import CheckpointError
            raise CheckpointError(f"the checkpoint holds {len(states)} workers, the config asks for "
                                  f"{self.num_workers} (workers.num_workers)")
        ray.get([h.load_state_dict.remote(s) for h, s in zip(self.handles, states, strict=True) if s is not None],
                timeout=self.timeout_s)

    def shutdown(self) -> None:
        for h in self.handles:
            try:
                ray.kill(h, no_restart=True)
            except RayError:
                pass
        if self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group
            remove_placement_group(self.placement_group)
