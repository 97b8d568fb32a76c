"""TD targets and loss, target-network updates, and exploration schedules against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from distdqn.core.losses import td_loss, td_targets
from distdqn.core.schedules import (
    ConstantSchedule,
    ExponentialSchedule,
    LinearSchedule,
    make_schedule,
    per_actor_epsilons,
)
from distdqn.core.targets import TargetUpdater, hard_update, soft_update

torch.set_num_threads(1)

T = torch.tensor


# ---- TD targets ----

REWARDS = T([1.0, 0.5, -1.0, 2.0])
DISCOUNTS = T([0.9, 0.81, 0.9, 0.729])
TERMINATED = T([False, False, True, False])
NEXT_Q_TARGET = T([[1.0, 3.0, 2.0],
                   [4.0, 0.0, -1.0],
                   [10.0, 20.0, 30.0],
                   [-2.0, -1.0, -3.0]])
NEXT_Q_ONLINE = T([[5.0, 0.0, 1.0],     # argmax 0 -> target value 1
                   [0.0, 0.0, 9.0],     # argmax 2 -> -1
                   [0.0, 9.0, 0.0],     # terminated: ignored
                   [0.0, 0.0, 1.0]])    # argmax 2 -> -3


def test_dqn_targets_use_the_target_max_and_mask_terminated():
    y = td_targets(REWARDS, DISCOUNTS, TERMINATED, None, NEXT_Q_TARGET)
    expected = T([1.0 + 0.9 * 3.0, 0.5 + 0.81 * 4.0, -1.0, 2.0 + 0.729 * -1.0])
    torch.testing.assert_close(y, expected)


def test_double_dqn_targets_take_argmax_from_online_value_from_target():
    y = td_targets(REWARDS, DISCOUNTS, TERMINATED, NEXT_Q_ONLINE, NEXT_Q_TARGET)
    expected = T([1.0 + 0.9 * 1.0, 0.5 + 0.81 * -1.0, -1.0, 2.0 + 0.729 * -3.0])
    torch.testing.assert_close(y, expected)


def test_terminated_rows_use_only_the_reward_even_with_huge_next_values():
    huge = torch.full((4, 3), 1e6)
    y = td_targets(REWARDS, DISCOUNTS, T([True, True, True, True]), huge, huge)
    torch.testing.assert_close(y, REWARDS)


# ---- TD loss ----

Q_TAKEN = T([1.0, 2.0, -0.5, 4.0])
TARGETS = T([1.5, 0.0, 0.0, 1.0])        # errors -0.5, 2.0, -0.5, 3.0
WEIGHTS = T([1.0, 0.5, 2.0, 0.25])


def test_mse_loss_hand_computed():
    loss, td = td_loss(Q_TAKEN, TARGETS, WEIGHTS, "mse")
    # 0.5 * err^2 = .125, 2, .125, 4.5 ; weighted = .125, 1, .25, 1.125 ; mean = 2.5 / 4
    assert loss.item() == pytest.approx(2.5 / 4)
    torch.testing.assert_close(td, T([-0.5, 2.0, -0.5, 3.0]))


def test_huber_loss_hand_computed():
    loss, td = td_loss(Q_TAKEN, TARGETS, WEIGHTS, "huber", huber_delta=1.0)
    # huber(|e| <= 1) = .5 e^2, else |e| - .5 : .125, 1.5, .125, 2.5 ; weighted .125, .75, .25, .625
    assert loss.item() == pytest.approx(1.75 / 4)
    torch.testing.assert_close(td, T([-0.5, 2.0, -0.5, 3.0]))
    # delta = 2: .125, 2 (= .5 * 4), .125, delta * (|e| - delta / 2) = 4 ; weighted .125, 1, .25, 1
    loss2, _ = td_loss(Q_TAKEN, TARGETS, WEIGHTS, "huber", huber_delta=2.0)
    assert loss2.item() == pytest.approx(2.375 / 4)


def test_huber_and_mse_agree_for_small_errors():
    q = T([0.1, -0.2, 0.3])
    y = torch.zeros(3)
    w = torch.ones(3)
    assert td_loss(q, y, w, "huber")[0].item() == pytest.approx(td_loss(q, y, w, "mse")[0].item())


def test_loss_gradient_flows_to_q_but_td_errors_are_detached():
    q = Q_TAKEN.clone().requires_grad_(True)
    loss, td = td_loss(q, TARGETS, WEIGHTS, "mse")
    loss.backward()
    # d/dq of mean(w * .5 * e^2) = w * e / B
    torch.testing.assert_close(q.grad, WEIGHTS * T([-0.5, 2.0, -0.5, 3.0]) / 4)
    assert not td.requires_grad


def test_unknown_loss_is_an_error():
    with pytest.raises(ValueError):
        td_loss(Q_TAKEN, TARGETS, WEIGHTS, "l1")


# ---- target updates ----

def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    online = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    target = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    return online, target


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_hard_update_copies_exactly():
    online, target = _pair()
    assert not _same(online, target)
    hard_update(target, online)
    assert _same(online, target)
    # a copy, not shared storage
    with torch.no_grad():
        online[0].weight.add_(1.0)
    assert not _same(online, target)


def test_soft_update_is_tau_mix_exactly_for_dyadic_values():
    online, target = _pair()
    with torch.no_grad():   # values whose mixes are exact in float32
        for i, (p, q) in enumerate(zip(online.parameters(), target.parameters())):
            p.copy_(torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) / 8 + i)
            q.copy_(-torch.arange(q.numel(), dtype=torch.float32).reshape(q.shape) / 4)
    before = [q.clone() for q in target.parameters()]
    soft_update(target, online, 0.25)
    for p, q, old in zip(online.parameters(), target.parameters(), before):
        assert torch.equal(q, 0.25 * p + 0.75 * old)


def test_soft_update_random_values():
    online, target = _pair(3)
    before = [q.clone() for q in target.parameters()]
    soft_update(target, online, 0.005)
    for p, q, old in zip(online.parameters(), target.parameters(), before):
        torch.testing.assert_close(q, 0.005 * p + 0.995 * old, rtol=1e-6, atol=1e-7)
    soft_update(target, online, 1.0)
    assert _same(online, target)


def test_target_updater_hard_copies_only_every_period():
    online, target = _pair()
    updater = TargetUpdater("hard", period=3)
    copies = []
    for update in range(1, 10):
        with torch.no_grad():   # the online net moves every update
            for p in online.parameters():
                p.add_(0.1)
        before = [q.clone() for q in target.parameters()]
        changed = updater.after_update(update, target, online)
        copies.append(changed)
        if update % 3 == 0:
            assert changed and _same(online, target)
        else:
            assert not changed
            assert all(torch.equal(q, b) for q, b in zip(target.parameters(), before))
    assert copies == [False, False, True] * 3


def test_target_updater_soft_mixes_after_every_update():
    online, target = _pair()
    updater = TargetUpdater("soft", tau=0.5)
    before = [q.clone() for q in target.parameters()]
    assert updater.after_update(1, target, online)
    for p, q, old in zip(online.parameters(), target.parameters(), before):
        torch.testing.assert_close(q, 0.5 * p + 0.5 * old)


def test_target_updater_rejects_unknown_kind():
    with pytest.raises(ValueError):
        TargetUpdater("polyak")


# ---- schedules ----

def test_linear_schedule_endpoints_and_midpoint():
    s = LinearSchedule(1.0, 0.1, 100)
    assert s(0) == 1.0
    assert s(50) == pytest.approx(0.55)
    assert s(25) == pytest.approx(0.775)
    assert s(100) == pytest.approx(0.1)
    assert s(10_000) == pytest.approx(0.1)
    assert s(-5) == 1.0
    assert LinearSchedule(0.0, 1.0, 0)(1) == 1.0      # zero duration: immediately at the end


def test_exponential_schedule_endpoints_and_midpoint():
    s = ExponentialSchedule(1.0, 0.1, 100)
    assert s(0) == pytest.approx(1.0)
    assert s(100) == pytest.approx(0.1 + 0.9 * math.exp(-1))
    assert s(50) == pytest.approx(0.1 + 0.9 * math.exp(-0.5))
    assert s(100_000) == pytest.approx(0.1)
    assert s(-3) == pytest.approx(1.0)


def test_make_schedule_and_constant():
    assert isinstance(make_schedule("linear", 1.0, 0.0, 10), LinearSchedule)
    assert isinstance(make_schedule("exponential", 1.0, 0.0, 10), ExponentialSchedule)
    c = make_schedule("constant", 0.3, 0.0, 10)
    assert isinstance(c, ConstantSchedule) and c(0) == c(10**9) == 0.3
    with pytest.raises(ValueError):
        make_schedule("cosine", 1.0, 0.0, 10)


def test_per_actor_epsilons_apex():
    eps = per_actor_epsilons(8)
    expected = np.array([0.4 ** (1 + i / 7 * 7) for i in range(8)])
    np.testing.assert_allclose(eps, expected, rtol=1e-12)
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4 ** 8)
    assert np.all(np.diff(eps) < 0)
    np.testing.assert_array_equal(per_actor_epsilons(1), [0.4])
    np.testing.assert_allclose(per_actor_epsilons(3, 0.5, 2.0), [0.5, 0.25, 0.125])
