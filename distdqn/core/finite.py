"""NaN and infinity, caught where they enter: an environment's observations and rewards (the
Actor), a learner update's loss and gradient (DQNLearner), an update a server would apply
(``runtime/parameter_server.py``, federated's ``Rounds.step``). Pure functions and one counter.

    finite(value)              no NaN or infinity in an array, a tensor, a number or a dict of arrays
    finite_rows(transitions)   which transitions hold only finite numbers
    NonFiniteStreak            skipped updates, total and in a row; too many in a row end the run
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np
import torch

from distdqn.core.transitions import Transitions
from distdqn.errors import NonFiniteError


def finite(value: Any) -> bool:
    """True if ``value`` (an array, tensor, number, or a mapping or sequence of them) holds no NaN
    or infinity. Integer and boolean arrays always do."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, Mapping):
        return all(finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(finite(v) for v in value)
    array = np.asarray(value)
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())


def finite_rows(transitions: Transitions) -> np.ndarray:
    """[B] True where the transition's observations, return and discount are all finite."""
    ok = np.ones(len(transitions), dtype=bool)
    for f in fields(Transitions):
        column = getattr(transitions, f.name)
        if column.dtype.kind in "fc":
            ok &= np.isfinite(column.reshape(len(column), -1)).all(axis=1)
    return ok


class NonFiniteStreak:
    """Counts updates refused for a NaN or infinity: in all, and in a row; ``limit`` in a row end
    the run (NonFiniteError naming ``what`` and the config field that sets the limit)."""

    def __init__(self, limit: int, what: str, field: str = "learner.max_non_finite_updates"):
        self.limit, self.what, self.field = limit, what, field
        self.total = 0
        self.in_row = 0

    def check(self, ok: bool) -> bool:
        """Record one update (``ok``: finite); returns ``ok``."""
        if ok:
            self.in_row = 0
            return True
        self.total += 1
        self.in_row += 1
        if self.in_row >= self.limit:
            raise NonFiniteError(f"{self.what}: {self.in_row} updates in a row held a NaN or infinity and "
                                 f"were not applied ({self.field}={self.limit}); the last checkpoint is intact")
        return False
