"""RolePool: the N processes of one restartable role (data-parallel workers, federated clients,
apex's experience actors), started on the cluster (in a placement group when they must run
together), replaced when one dies, and asked for their state at checkpoints. Every wait has a
timeout. Process i of generation g (its restarts) is seeded ``replica_seed(seed, i, g)``: one
formula for every role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from distdqn.errors import CheckpointError
from distdqn.local.replica import replica_seed
from distdqn.runtime.cluster import ClusterError

MAX_RESTARTS_PER_PROCESS = 10


class RolePool:
    """``args(index, seed)`` gives process ``index``'s constructor arguments; ``options`` are its
    Ray options (resources; ``placement`` puts every process in one packed placement group,
    otherwise they are spread over the nodes)."""

    def __init__(self, role: str, actor_class: Any, count: int, seed: int,
                 args: Callable[[int, int], tuple], options: dict[str, Any], placement: bool = False,
                 timeout_s: float = 120.0):
        self.role, self.actor_class, self.count = role, actor_class, count
        self.seed, self.args, self.options, self.timeout_s = seed, args, options, timeout_s
        self.restarts = 0
        self.generations = [0] * count
        self._identities: dict[int, tuple[int, Any]] = {}   # index -> (generation, identity) known
        self._asking: dict[int, tuple[int, Any]] = {}       # index -> (generation, ref) asked, not yet answered
        self.placement_group = None
        if placement:
            from ray.util.placement_group import placement_group
            bundle = {"CPU": options.get("num_cpus", 1), **({"GPU": options["num_gpus"]} if options.get("num_gpus") else {}),
                      **options.get("resources", {})}
            self.placement_group = placement_group([bundle] * count, strategy="PACK")
            ready, _ = ray.wait([self.placement_group.ready()], timeout=timeout_s)
            if not ready:
                raise ClusterError(f"the cluster could not place {count} {role}s x {bundle} "
                                   f"together within {timeout_s:.0f} s")
        self.handles = [self._start(i) for i in range(count)]

    def _start(self, index: int):
        options = dict(self.options)
        if self.placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.placement_group, placement_group_bundle_index=index)
        else:
            options.setdefault("scheduling_strategy", "SPREAD")
        seed = replica_seed(self.seed, index, self.generations[index])
        return self.actor_class.options(**options).remote(*self.args(index, seed))

    def restart(self, index: int) -> None:
        """Replace process ``index`` (which died) by a fresh one with a new seed."""
        if self.generations[index] >= MAX_RESTARTS_PER_PROCESS:
            raise ClusterError(f"{self.role} {index} died {MAX_RESTARTS_PER_PROCESS + 1} times; giving up "
                               f"(see the Ray worker logs for why)")
        ray.kill(self.handles[index], no_restart=True)
        self.restarts += 1
        self.generations[index] += 1
        self.handles[index] = self._start(index)

    def result(self, ref: Any) -> Any:
        """The value of a finished call, or None if its process died (RayActorError)."""
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except RayActorError:
            return None

    def identities(self, wait: bool = True) -> dict[str, Any]:
        """{<role><i>: pid, node} of every process; waits for them to be constructed. A process is
        asked once: a busy one (an actor's queued calls wait on the learner, which waits on the
        driver) would otherwise hold the driver up. ``wait=False`` (after a restart): a process
        still starting is asked, not waited for (importing torch takes seconds, while the others'
        calls wait for the driver); its entry is None until a later call finds the answer."""
        for i, h in enumerate(self.handles):
            known = self._identities.get(i, (-1, None))[0] == self.generations[i]
            if not known and self._asking.get(i, (-1, None))[0] != self.generations[i]:
                self._asking[i] = (self.generations[i], h.identity.remote())
        for i, (generation, ref) in list(self._asking.items()):
            if not wait and not ray.wait([ref], timeout=0)[0]:
                continue
            del self._asking[i]
            identity = _get_or_none(ref, self.timeout_s)
            if identity is not None and generation == self.generations[i]:
                self._identities[i] = (generation, identity)
        return {f"{self.role}{i}": (self._identities[i][1] if self._identities.get(i, (-1,))[0] == self.generations[i]
                                    else None) for i in range(self.count)}

    @property
    def starting(self) -> bool:
        """Whether a process's identity was asked for and has not come back yet."""
        return bool(self._asking)

    def state_dicts(self, with_replay: bool) -> list[dict[str, Any] | None]:
        """Every process's state; None for one that is dead or does not answer in time (a
        checkpoint is still written, and that process starts afresh when the run is resumed)."""
        refs = [h.state_dict.remote(with_replay) for h in self.handles]
        return [_get_or_none(ref, self.timeout_s) for ref in refs]

    def load_state_dicts(self, states: list[dict[str, Any] | None]) -> None:
        if len(states) != self.count:
            raise CheckpointError(f"the checkpoint holds {len(states)} {self.role}s, the config asks for "
                                  f"{self.count} (workers.num_workers)")
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


def _get_or_none(ref: Any, timeout_s: float) -> Any:
    try:
        return ray.get(ref, timeout=timeout_s)
    except (RayError, GetTimeoutError):
        return None
