"""CPU affinity: cores of its own for apex's learner (Linux; elsewhere every call does nothing).

Where the learner is the bottleneck, each process that the OS scheduler puts on the learner's core
takes time from it, and Ray workers run at nice 15 under a driver and Ray daemons at nice 0, so
any of them that wakes on that core preempts the learner at once (its /proc schedstat shows the
time it spends runnable but waiting for a core: ``python -m benchmarks.core_contention``,
benchmarks/RESULTS.md). The learner's thread therefore takes ``ceil(apex.learner_cpus)``
cores of its node (the highest-numbered it may use) and everything else keeps off them: the
learner process's other threads (Ray's, and those serving inserts), actors, a replay server, the
driver, and the Ray instance the run started, if it did.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path


def allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on; None where the OS has no affinity call."""
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def pin(cpus: Iterable[int], pid: int | None = None) -> None:
    """Every thread of process ``pid`` (this one by default) runs on ``cpus`` only; threads and
    processes it starts later inherit that. A thread or process that ends meanwhile is skipped."""
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = set(cpus)
    tasks = Path(f"/proc/{pid or os.getpid()}/task")
    try:
        tids = [int(t.name) for t in tasks.iterdir()]
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:   # ended since the listing
            pass


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, and by those, and so on (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])   # the name may hold spaces: split after it
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def last_blocks(cpus: set[int], count: int, block: int, blocks: int) -> tuple[list[int], set[int]] | None:
    """Block ``block`` of the last ``blocks`` blocks of ``count`` CPUs (block 0 the highest-numbered),
    and the CPUs outside every block; None when the blocks would leave none outside."""
    if count < 1 or not 0 <= block < blocks or len(cpus) <= count * blocks:
        return None
    ordered = sorted(cpus)
    end = len(ordered) - count * block
    return ordered[end - count:end], set(ordered[:len(ordered) - count * blocks])


def claim_last(count: int, block: int = 0, blocks: int = 1) -> list[int] | None:
    """The calling thread takes block ``block`` of the last ``blocks`` blocks of ``count`` CPUs of
    this process (``last_blocks``: one block per learner on the node) for itself; the process's
    other threads (Ray's I/O threads, threads serving other calls) move to the CPUs outside every
    block, and threads started later run where their starter does. Returns the CPUs taken; None
    (nothing pinned) when the blocks would leave no CPU for the rest, or the OS has no affinity call."""
    cpus = allowed_cpus()
    split = last_blocks(cpus, count, block, blocks) if cpus is not None else None
    if split is None:
        return None
    mine, rest = split
    pin(rest)
    os.sched_setaffinity(threading.get_native_id(), mine)
    return mine
