"""Pre-flight: whether a run's processes fit on the cluster's nodes, checked before any starts.

Ray leaves an actor that no node can hold pending, without a word (RLlib's Ape-X hung creating
co-located replay shards: ray-project/ray issue 2541). A run is therefore placed on paper first,
node by node: processes pinned to a node go there, a group that must share a node (learners that
average through shared memory) goes on one node, and the rest are packed largest first. What
does not fit is named in one line, with what is missing. The cluster's totals are checked too
(``cluster.require_resources``); this adds that each process fits on some node beside the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from distdqn.runtime.cluster import ClusterError


@dataclass(frozen=True)
class Demand:
    """One process's resources; ``node``: it must run there (a shard per host); ``group``: the
    processes of one group name must share a node."""

    name: str
    cpus: float
    gpus: float = 0.0
    node: str | None = None
    group: str | None = None


@dataclass
class Node:
    node_id: str
    cpus: float
    gpus: float

    def holds(self, d: Demand) -> bool:
        return d.cpus <= self.cpus + 1e-9 and d.gpus <= self.gpus + 1e-9

    def take(self, d: Demand) -> None:
        self.cpus -= d.cpus
        self.gpus -= d.gpus


def first_unplaced(nodes: list[Node], demands: list[Demand]) -> tuple[Demand, list[Node]] | None:
    """None if every demand fits on ``nodes``; else the first that does not (pinned ones first,
    then groups, then the rest largest first) and what the nodes had left for it."""
    free = [Node(n.node_id, n.cpus, n.gpus) for n in nodes]
    by_id = {n.node_id: n for n in free}
    for d in [d for d in demands if d.node is not None]:
        node = by_id.get(d.node)
        if node is None or not node.holds(d):
            return d, free
        node.take(d)
    for group in dict.fromkeys(d.group for d in demands if d.group is not None and d.node is None):
        members = [d for d in demands if d.group == group and d.node is None]
        need = Demand(group, sum(d.cpus for d in members), sum(d.gpus for d in members))
        home = next((n for n in free if n.holds(need)), None)
        if home is None:
            return need, free
        home.take(need)
    rest = sorted((d for d in demands if d.node is None and d.group is None), key=lambda d: (-d.gpus, -d.cpus))
    for d in rest:
        node = max((n for n in free if n.holds(d)), key=lambda n: (n.cpus, n.gpus), default=None)
        if node is None:
            return d, free
        node.take(d)
    return None


def cluster_nodes() -> list[Node]:
    """The alive nodes and their CPUs and GPUs."""
    return [Node(n["NodeID"], n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0))
            for n in ray.nodes() if n.get("Alive")]


def require_placement(demands: list[Demand], what: str, nodes: list[Node] | None = None) -> None:
    """Raise ClusterError, in one line saying what is missing, unless ``demands`` fit the nodes."""
    nodes = cluster_nodes() if nodes is None else nodes
    missing = first_unplaced(nodes, demands)
    if missing is None:
        return
    d, left = missing
    where = f"on node {d.node[:12]}" if d.node else "on any one node"
    spots = [n for n in left if n.node_id == d.node] if d.node else left
    most = max(spots, key=lambda n: (n.cpus, n.gpus)) if spots else Node("", 0.0, 0.0)
    sizes = ", ".join(f"{n.cpus:g} CPUs {n.gpus:g} GPUs" for n in nodes)
    raise ClusterError(f"{what} cannot be placed: {d.name} needs {d.cpus:g} CPUs and {d.gpus:g} GPUs {where}, "
                       f"and beside the rest at most {max(most.cpus, 0):g} CPUs and {max(most.gpus, 0):g} GPUs "
                       f"are left there (the cluster's {len(nodes)} node(s): {sizes})")
