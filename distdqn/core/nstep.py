"""N-step returns, formed when data is written, per environment, over whole blocks of steps.

An actor hands over a block of T vector steps ([T, num_envs] arrays); the accumulator turns every
step that started a transition into an n-step transition once its window is complete:

    reward   = sum_{k=0}^{m-1} gamma^k r_{t+k}
    next_obs = the observation after step t+m-1,  discount = gamma^m,  terminated = terminated_{t+m-1}

where m = n, or fewer when the episode ends (terminated or truncated) inside the window. A window
cut by truncation bootstraps from the last real observation; one cut by termination does not.
Windows still open at the end of a block wait for the next block (the last n-1 steps are carried).
The work is a loop over the n offsets, each one NumPy operation over the whole [T, num_envs] block.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from distdqn.core.transitions import Transitions


@dataclass
class StepBlock:
    """T consecutive vector steps of one vector env, as [T, num_envs, ...] arrays.

    ``valid`` is False for a step that is not a transition (the reset step of NEXT_STEP autoreset).
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return len(self.reward)

    def tail(self, length: int) -> StepBlock:
        """A copy of the last ``length`` steps (the caller may reuse its arrays for the next block)."""
        return StepBlock(**{f.name: getattr(self, f.name)[len(self) - length:].copy() for f in fields(self)})

    @staticmethod
    def concatenate(a: StepBlock, b: StepBlock) -> StepBlock:
        return StepBlock(**{f.name: np.concatenate([getattr(a, f.name), getattr(b, f.name)])
                            for f in fields(StepBlock)})


class NStepAccumulator:
    """Turns blocks of vector steps into n-step transitions (see the module docstring)."""

    def __init__(self, n: int, gamma: float):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self.gamma = gamma
        self._carry: StepBlock | None = None       # the last < n steps, whose windows may be open
        self._carry_open: np.ndarray | None = None  # [len(carry), num_envs]: window still open

    def add(self, block: StepBlock) -> Transitions:
        steps = block if self._carry is None else StepBlock.concatenate(self._carry, block)
        length = len(steps)
        start = block.valid if self._carry is None else np.concatenate([self._carry_open, block.valid])
        done = (steps.terminated | steps.truncated) & steps.valid

        ret = np.zeros(steps.reward.shape, dtype=np.float64)
        open_ = start.copy()
        end = np.full(steps.reward.shape, -1, dtype=np.int64)   # offset m-1 of the window's last step
        for k in range(min(self.n, length)):
            rows = length - k                                     # starts s with s + k inside the block
            alive = open_[:rows]
            ret[:rows] += np.where(alive, (self.gamma ** k) * steps.reward[k:], 0.0)
            closes = alive & (done[k:] | (k == self.n - 1))
            end[:rows][closes] = k
            open_[:rows] &= ~closes

        s, e = np.nonzero(end >= 0)                               # time-major, then env order
        m = end[s, e]
        last = s + m
        out = Transitions(
            obs=steps.obs[s, e],
            action=steps.action[s, e].astype(np.int64),
            reward=ret[s, e].astype(np.float32),
            next_obs=steps.next_obs[last, e],
            terminated=steps.terminated[last, e].astype(bool),
            discount=(self.gamma ** (m + 1)).astype(np.float32),
        )
        keep = min(self.n - 1, length)
        if keep > 0:
            self._carry = steps.tail(keep)
            self._carry_open = open_[length - keep:]
        else:
            self._carry, self._carry_open = None, None
        return out

    def state_dict(self) -> dict[str, Any]:
        if self._carry is None:
            return {"carry": None}
        return {"carry": {f.name: getattr(self._carry, f.name).copy() for f in fields(StepBlock)},
                "carry_open": self._carry_open.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["carry"] is None:
            self._carry, self._carry_open = None, None
        else:
            self._carry = StepBlock(**state["carry"])
            self._carry_open = state["carry_open"].copy()
