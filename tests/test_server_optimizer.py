"""core.server_optimizer: the federated server's step along the aggregate (Reddi et al. 2021), by hand."""

from __future__ import annotations

import numpy as np
import pytest

from distdqn.core.server_optimizer import ServerOptimizer


def d(x):
    return {"w": np.array(x, dtype=np.float32)}


def test_fedavg_is_the_aggregate_times_the_learning_rate():
    opt = ServerOptimizer("fedavg", lr=0.5)
    step = opt.step(d([2.0, -4.0]))
    np.testing.assert_allclose(step["w"], [1.0, -2.0])
    assert step["w"].dtype == np.float32


def test_fedavgm_accumulates_momentum():
    opt = ServerOptimizer("fedavgm", lr=1.0, beta1=0.5)
    np.testing.assert_allclose(opt.step(d([1.0]))["w"], [1.0])          # m = 1
    np.testing.assert_allclose(opt.step(d([1.0]))["w"], [1.5])          # m = 0.5 * 1 + 1
    np.testing.assert_allclose(opt.step(d([0.0]))["w"], [0.75])         # m = 0.5 * 1.5


def test_fedadam_by_hand():
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt = ServerOptimizer("fedadam", lr=lr, beta1=b1, beta2=b2, tau=tau)
    # round 1: m = 0.1 * 2 = 0.2; v = 0.99 * tau^2 + 0.01 * 4
    m, v = (1 - b1) * 2.0, b2 * tau**2 + (1 - b2) * 4.0
    np.testing.assert_allclose(opt.step(d([2.0]))["w"], [lr * m / (np.sqrt(v) + tau)], rtol=1e-6)
    # round 2 with -1
    m, v = b1 * m + (1 - b1) * -1.0, b2 * v + (1 - b2) * 1.0
    np.testing.assert_allclose(opt.step(d([-1.0]))["w"], [lr * m / (np.sqrt(v) + tau)], rtol=1e-6)


def test_fedyogi_moves_v_toward_the_square_by_a_bounded_amount():
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt = ServerOptimizer("fedyogi", lr=lr, beta1=b1, beta2=b2, tau=tau)
    v0 = tau**2
    m = (1 - b1) * 2.0
    v = v0 - (1 - b2) * 4.0 * np.sign(v0 - 4.0)             # v < Delta^2: v grows by 0.01 * 4
    np.testing.assert_allclose(opt.step(d([2.0]))["w"], [lr * m / (np.sqrt(v) + tau)], rtol=1e-6)
    m = b1 * m
    v = v - (1 - b2) * 0.0                                   # Delta = 0: v stays
    np.testing.assert_allclose(opt.step(d([0.0]))["w"], [lr * m / (np.sqrt(v) + tau)], rtol=1e-6)


def test_state_round_trips_and_refuses_another_kind():
    a = ServerOptimizer("fedadam", lr=0.1)
    for x in ([1.0, 2.0], [0.5, -1.0]):
        a.step(d(x))
    b = ServerOptimizer("fedadam", lr=0.1)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.step(d([3.0, 3.0]))["w"], b.step(d([3.0, 3.0]))["w"])
    with pytest.raises(ValueError, match="fedadam, not fedyogi"):
        ServerOptimizer("fedyogi").load_state_dict(a.state_dict())


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown server optimizer"):
        ServerOptimizer("sgd")
