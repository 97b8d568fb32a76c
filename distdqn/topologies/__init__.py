"""Topologies: how the same core pieces are wired across processes. One file each, run(...) -> RunResult.

Vocabulary, used with one meaning everywhere:

env step         one sub-environment stepping once and producing one transition (the reset step of
                 Gymnasium's NEXT_STEP autoreset is not counted: it produces no transition).
vector step      one call of ``VectorEnv.step``: ``num_envs`` env steps at once.
transition       (s, a, R, s', terminated, discount) with an n-step return R, as stored in replay.
learner update   one gradient step on one batch (counted once per update however many workers
                 contributed gradients to it).
replay ratio     batches learned from per env step: learner updates per env step for one learner
                 (single, apex); in the data-parallel topologies each worker draws batches at this
                 ratio from its own replay, and one learner update combines N workers' batches.
round            (sync_ps, federated) one cycle of broadcast -> local work -> aggregate.
staleness        (async_ps) server version minus the version a worker's update was computed on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from distdqn.config import TOPOLOGIES


def get_run(topology: str) -> Callable:
    """The ``run`` function of ``topology`` (imported lazily: only what is used is loaded)."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}")
    return importlib.import_module(f"distdqn.topologies.{topology}").run
