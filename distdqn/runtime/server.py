"""ParameterServer: the server's DQNLearner (online and target networks, optimizer), its version,
and its side of the weights channel: each version of the online and target weights is put into
the object store once and pushed with every worker's call, less what the worker already holds.

The parameter-server topologies (sync_ps, async_ps, federated) run it in the driver, which
conducts the workers' calls; all the arithmetic is in ``core`` (the learner, ``core.aggregate``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import ray

from distdqn.core import aggregate
from distdqn.core.learner import DQNLearner
from distdqn.runtime.messages import Weights

# Weights are put into the object store once per version and every worker reads them from there:
# put once, read by all, which is what a large network needs. For a network as small as CartPole's
# that costs more than it saves (`python -m benchmarks.ps_round`, benchmarks/RESULTS.md): choosing
# by size is a lead not yet taken.


class ParameterServer:
    def __init__(self, learner: DQNLearner):
        self.learner = learner
        self._online: tuple[int, list] | None = None   # (version, [ref]) of the last put
        self._target: tuple[int, list] | None = None
        self._held: dict[int, tuple[int, int]] = {}    # worker -> (online, target) versions it was sent

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

    def move_toward(self, models: list[Mapping[str, np.ndarray]], rate: float, num_updates: int) -> None:
        """theta <- theta + rate * (mean_i(theta_i) - theta): model averaging (rate 1, the sync form),
        or one worker's model mixed in (rate eta, the async parameter form). Counts ``num_updates``
        updates, with the target updates they make."""
        theta = self.learner.get_weights()
        self.apply_delta(aggregate.difference(aggregate.mean_of(models), theta), num_updates, rate)

    def apply_delta(self, delta: Mapping[str, np.ndarray], num_updates: int, rate: float = 1.0) -> None:
        """theta <- theta + rate * delta (an aggregate of workers' updates), counting ``num_updates``."""
        self.learner.set_weights(aggregate.add_scaled(self.learner.get_weights(), delta, rate))
        self.learner.advance(num_updates)

    # ---- the weights channel ----
    def weights_for(self, worker: int) -> Weights:
        """The current online and target weights (each put once per version), leaving out a part
        that ``worker`` was already sent: the target network changes only every
        ``target_update_period`` updates, and need not travel meanwhile."""
        if self._online is None or self._online[0] != self.version:
            self._online = (self.version, [ray.put(self.learner.get_weights())])
        if self._target is None or self._target[0] != self.learner.target_version:
            self._target = (self.learner.target_version, [ray.put(self.learner.get_target_weights())])
        held = self._held.get(worker, (-1, -1))
        self._held[worker] = (self._online[0], self._target[0])
        return Weights(self._online[0], [] if held[0] == self._online[0] else self._online[1],
                       self._target[0], [] if held[1] == self._target[0] else self._target[1])

    def forget(self, worker: int) -> None:
        """``worker`` was replaced: it holds nothing yet."""
        self._held.pop(worker, None)
