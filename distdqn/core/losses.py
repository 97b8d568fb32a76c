"""TD targets and the TD loss. Priorities (|TD error|) are returned explicitly, never stored in a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def td_targets(rewards: torch.Tensor, discounts: torch.Tensor, terminated: torch.Tensor,
               next_q_online: torch.Tensor | None, next_q_target: torch.Tensor) -> torch.Tensor:
    """y = r + discount * (1 - terminated) * Q_target(s', a*).

    a* = argmax_a Q_online(s', a) for Double DQN (``next_q_online`` given), else argmax of the target
    itself (the max). ``discount`` is gamma^m for an m-step transition. Truncated episodes are not
    ``terminated`` and do bootstrap.
    """
    if next_q_online is None:
        next_value = next_q_target.max(dim=1).values
    else:
        next_value = next_q_target.gather(1, next_q_online.argmax(dim=1, keepdim=True)).squeeze(1)
    return rewards + discounts * (~terminated).to(rewards.dtype) * next_value


def td_loss(q_taken: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, kind: str,
            huber_delta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-weighted mean of Huber or squared TD errors; returns (loss, td_errors)."""
    td_errors = q_taken - targets
    if kind == "huber":
        elementwise = F.huber_loss(q_taken, targets, reduction="none", delta=huber_delta)
    elif kind == "mse":
        elementwise = 0.5 * td_errors.square()
    else:
        raise ValueError(f"unknown loss {kind!r}")
    return (weights * elementwise).mean(), td_errors.detach()
