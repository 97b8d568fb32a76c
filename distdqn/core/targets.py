"""Target network updates: hard copy every C learner updates, or soft (Polyak) with tau."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def hard_update(target: nn.Module, online: nn.Module) -> None:
    """theta^- <- theta."""
    torch._foreach_copy_(list(target.parameters()), list(online.parameters()))


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """theta^- <- tau * theta + (1 - tau) * theta^-."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


class TargetUpdater:
    """Calls hard_update every ``period`` learner updates, or soft_update after every update."""

    def __init__(self, kind: str, period: int = 1, tau: float = 1.0):
        if kind not in ("hard", "soft"):
            raise ValueError(f"unknown target update {kind!r}")
        self.kind, self.period, self.tau = kind, period, tau

    def after_update(self, learner_updates: int, target: nn.Module, online: nn.Module) -> bool:
        """Call once after each learner update (``learner_updates`` counts it); True if the target changed."""
        if self.kind == "soft":
            soft_update(target, online, self.tau)
            return True
        if learner_updates % self.period == 0:
            hard_update(target, online)
            return True
        return False

    def after_updates(self, before: int, after: int, target: nn.Module, online: nn.Module) -> bool:
        """After ``after - before`` updates made at once (model averaging): a hard copy if a multiple
        of the period lies in (before, after]; a soft update with the rate of that many steps,
        1 - (1 - tau)^k, which is what k soft updates toward a fixed online network would give."""
        k = after - before
        if k <= 0:
            return False
        if self.kind == "soft":
            soft_update(target, online, 1.0 - (1.0 - self.tau) ** k)
            return True
        if after // self.period > before // self.period:
            hard_update(target, online)
            return True
        return False
