"""ParameterServer: the server's DQNLearner (online and target networks, optimizer), its version,
and the weights it broadcasts through the object store: put once per version, read by every worker.

The parameter-server topologies (sync_ps, async_ps) run it in the driver, which conducts the
workers' calls; all the arithmetic is in ``core`` (the learner, ``core.aggregate``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import ray

from distdqn.core import aggregate
from distdqn.core.learner import DQNLearner
from distdqn.runtime.workers import WeightsBox

# Weights are put into the object store once per version and every worker reads them from there:
# put once, read by all, which is what a large network needs. For a network as small as CartPole's
# (70 KB) that costs more than it saves: `python -m benchmarks.ps_round` measured 5.3-6.6 ms per
# 2-worker round this way against 3.9-5.3 ms with the weights inside each call (Ray inlines
# arguments under 100 KB). Choosing by size is a lead not yet taken.


def _boxed(weights: dict[str, np.ndarray]) -> list:
    return [ray.put(weights)]


class ParameterServer:
    def __init__(self, learner: DQNLearner):
        self.learner = learner
        self._online: tuple[int, list] | None = None   # (version, [ref]) of the last put
        self._target: tuple[int, list] | None = None

    @property
    def version(self) -> int:
        """Learner updates applied so far: a worker's update made at version v is this minus v stale."""
        return self.learner.updates

    def weights(self) -> dict[str, np.ndarray]:
        return self.learner.get_weights()

    # ---- the two kinds of update a server applies ----
    def apply_gradient(self, grads: Mapping[str, np.ndarray]) -> None:
        """theta <- optimizer step with ``grads`` (a mean over workers, or one worker's)."""
        self.learner.apply_grads(grads)

    def move_toward(self, models: list[Mapping[str, np.ndarray]], rate: float, num_updates: int,
                    weights: list[float] | None = None) -> None:
        """theta <- theta + rate * (mean_i(theta_i) - theta): model averaging (rate 1, the sync form),
        or one worker's model mixed in (rate eta, the async parameter form). Counts ``num_updates``
        updates, with the target updates they make."""
        theta = self.learner.get_weights()
        mean = aggregate.mean_of(models, weights)
        self.apply_delta(aggregate.difference(mean, theta), num_updates, rate)

    def apply_delta(self, delta: Mapping[str, np.ndarray], num_updates: int, rate: float = 1.0) -> None:
        """theta <- theta + rate * delta (an aggregate of workers' updates), counting ``num_updates``."""
        self.learner.set_weights(aggregate.add_scaled(self.learner.get_weights(), delta, rate))
        self.learner.advance(num_updates)

    # ---- broadcast ----
    def box(self, held: tuple[int, int] = (-1, -1)) -> WeightsBox:
        """The current online and target weights (each put once per version),
        leaving out a part the receiver already ``held`` ((online, target) versions): the target
        network changes only every ``target_update_period`` updates, and need not travel meanwhile."""
        if self._online is None or self._online[0] != self.version:
            self._online = (self.version, _boxed(self.learner.get_weights()))
        if self._target is None or self._target[0] != self.learner.target_version:
            self._target = (self.learner.target_version, _boxed(self.learner.get_target_weights()))
        online = [] if held[0] == self._online[0] else self._online[1]
        target = [] if held[1] == self._target[0] else self._target[1]
        return self._online[0], online, self._target[0], target
