"""TD targets and the TD loss, and their categorical (C51) counterparts. Priorities (|TD error|, or
the categorical loss) are returned explicitly, never stored in a batch."""

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


def categorical_targets(rewards: torch.Tensor, discounts: torch.Tensor, terminated: torch.Tensor,
                        next_probs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """The distribution of r + discount * (1 - terminated) * Z(s', a*) projected onto ``support``
    (Bellemare et al. 2017, Algorithm 1): [B, atoms], each row summing to 1.

    ``next_probs`` [B, atoms] is the target network's distribution at s' for the chosen action a*.
    Each shifted atom is clipped to [v_min, v_max] and its mass split between the two support
    points around it in proportion to closeness, so the projection keeps the mean of every
    distribution whose shifted atoms all lie inside the support.
    """
    v_min, v_max, atoms = support[0], support[-1], support.shape[0]
    scale = (discounts * (~terminated).to(discounts.dtype))[:, None]
    shifted = (rewards[:, None] + scale * support[None, :]).clamp_(v_min, v_max)
    position = ((shifted - v_min) * ((atoms - 1) / (v_max - v_min))).clamp_(0, atoms - 1)
    lower = position.floor()
    upper_weight = position - lower                       # mass to the point above
    lower = lower.long()
    upper = (lower + 1).clamp_(max=atoms - 1)             # an atom exactly on v_max: upper_weight is 0
    projected = torch.zeros_like(next_probs)
    projected.scatter_add_(1, lower, next_probs * (1.0 - upper_weight))
    projected.scatter_add_(1, upper, next_probs * upper_weight)
    return projected


def categorical_loss(log_probs: torch.Tensor, target_probs: torch.Tensor,
                     weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-weighted mean cross-entropy of the projected targets under the online
    distribution of the taken actions; returns (loss, per-transition cross-entropy), the second
    the priority Rainbow replays by."""
    cross_entropy = -(target_probs * log_probs).sum(dim=1)
    return (weights * cross_entropy).mean(), cross_entropy.detach()
