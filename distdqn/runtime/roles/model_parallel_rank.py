"""A rank r > 0 of apex's learner split over ``learner.model_parallel`` ranks (one logical learner:
local/model_parallel.py). It runs on the learner's node, joins the group that the learner (rank 0)
forms there, and in one long call makes every call rank 0 announces, until rank 0 ends it.

``split_learner`` starts the ranks beside the learner and forms the group (rank 0 hosts the
store on a loopback port, local/rendezvous.py; every rank joins with torch.distributed, gloo on
CPU, nccl on GPUs).
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distdqn.config import Config
from distdqn.envs import EnvInfo
from distdqn.local import affinity, model_parallel, rendezvous
from distdqn.runtime.process import Isolation, process_identity, set_worker_threads


@ray.remote(concurrency_groups={"control": 1})
class ModelParallelRank:
    def __init__(self, cfg: Config, info: EnvInfo, rank: int):
        set_worker_threads(cfg.apex.learner_cpus)
        self.cfg, self.info, self.rank = cfg, info, rank

    def serve(self, port: int, isolation: Isolation | None) -> None:
        """Join rank 0's group on this node and follow it until it ends the learner; on the
        learner's isolated cores, if it has some (they were claimed for all its ranks)."""
        if isolation is not None:
            affinity.pin(isolation.cpus)
        model_parallel.serve(self.cfg, self.info, rendezvous.LOOPBACK, port, self.rank)

    @ray.method(concurrency_group="control")
    def identity(self) -> dict[str, Any]:
        return process_identity(learner_rank=self.rank)

    @ray.method(concurrency_group="control")
    def ping(self) -> bool:
        """Answers at once, beside ``serve`` (the driver asks its essential roles when one fails)."""
        return True


def split_learner(cfg: Config, info: EnvInfo, learner: Any, isolation: Any, timeout_s: float) -> dict[str, Any]:
    """Start the learner's ranks 1 .. P-1 on its node and form their group with it (rank 0 then
    holds the learner's state split over all of them). Returns the ranks by name ("learner rank r")."""
    a = cfg.apex
    node = ray.get(learner.identity.remote(), timeout=timeout_s)["node_id"]
    ranks = {f"learner rank {r}": ModelParallelRank.options(
        num_cpus=a.learner_cpus, num_gpus=a.learner_gpus,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(cfg, info, r)
        for r in range(1, cfg.learner.model_parallel)}
    port = ray.get(learner.rendezvous_port.remote(), timeout=timeout_s)
    for handle in ranks.values():
        handle.serve.remote(port, isolation)   # runs until rank 0 ends it; a failure shows at rank 0
    ray.get(learner.lead_ranks.remote(port), timeout=timeout_s + cfg.learner.model_parallel_timeout_s)
    return ranks
