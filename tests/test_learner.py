"""DQNLearner: the fused MLP update against autograd, gradient split, weights, state and target sync."""

from __future__ import annotations

import copy
import io
import itertools

import numpy as np
import pytest
import torch

from distdqn.config import LearnerConfig
from distdqn.core.learner import DQNLearner
from distdqn.core.networks import MLPQNetwork, NatureCNN
from distdqn.core.transitions import Batch

torch.set_num_threads(1)

OBS_DIM, NUM_ACTIONS = 4, 3


def make_learner(seed: int = 0, dueling: bool = False, hidden=(16, 16), owns_target: bool = True,
                 **cfg) -> DQNLearner:
    torch.manual_seed(seed)
    net = MLPQNetwork(OBS_DIM, NUM_ACTIONS, list(hidden), dueling)
    base = {"lr": 1e-2, "device": "cpu", "target_update_period": 5}
    base.update(cfg)
    return DQNLearner(net, LearnerConfig(**base), owns_target=owns_target)


def grads_of(learner: DQNLearner) -> dict[str, np.ndarray]:
    """The gradient ``gradient`` left in the learner's flat buffer, per parameter (copies)."""
    return {name: p.grad.detach().numpy().copy() for name, p in learner.online.named_parameters()}


def random_batch(rng: np.random.Generator, size: int = 32, prioritized: bool = True) -> Batch:
    return Batch(
        obs=rng.normal(size=(size, OBS_DIM)).astype(np.float32),
        action=rng.integers(0, NUM_ACTIONS, size).astype(np.int64),
        reward=rng.normal(size=size).astype(np.float32),
        next_obs=rng.normal(size=(size, OBS_DIM)).astype(np.float32),
        terminated=rng.random(size) < 0.2,
        discount=np.full(size, 0.99 ** 3, np.float32),
        indices=np.arange(size, dtype=np.int64),
        weights=(rng.uniform(0.2, 1.0, size) if prioritized else np.ones(size)).astype(np.float32),
    )


def params(learner: DQNLearner, which: str = "online") -> dict[str, torch.Tensor]:
    net = learner.online if which == "online" else learner.target
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_params_close(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k, value in a.items():
        if atol == 0.0:
            assert torch.equal(value, b[k]), k
        else:
            torch.testing.assert_close(value, b[k], atol=atol, rtol=0.0, msg=k)


# ---- fused MLP kernel == autograd ----

@pytest.mark.parametrize("dueling,loss,double_dqn,max_grad_norm", [
    (dueling, loss, double, clip)
    for dueling, loss, double, clip in itertools.product([False, True], ["huber", "mse"], [True, False],
                                                         [None, 0.5])
])
def test_fused_kernel_matches_autograd(dueling, loss, double_dqn, max_grad_norm):
    cfg = {"dueling": dueling, "loss": loss, "double_dqn": double_dqn, "max_grad_norm": max_grad_norm,
           "lr": 3e-3, "target_update_period": 7}
    fused = make_learner(kernel="fused_mlp", **cfg)
    autograd = make_learner(kernel="autograd", **cfg)
    assert fused._fused is not None and autograd._fused is None
    assert_params_close(params(fused), params(autograd))     # same initial weights
    rng = np.random.default_rng(1)
    for _ in range(20):
        batch = random_batch(rng)
        r_fused, r_auto = fused.step(batch), autograd.step(batch)
        np.testing.assert_allclose(r_fused.priorities, r_auto.priorities, atol=1e-4, rtol=1e-4)
        for key in ("loss", "q_mean", "grad_norm"):
            assert r_fused.metrics[key] == pytest.approx(r_auto.metrics[key], rel=1e-4, abs=1e-5), key
    assert_params_close(params(fused), params(autograd), atol=1e-5)
    assert_params_close(params(fused, "target"), params(autograd, "target"), atol=1e-5)
    # the run actually moved the parameters
    assert not torch.allclose(params(fused)["head.value.weight" if dueling else "head.weight"],
                              params(make_learner(dueling=dueling))["head.value.weight" if dueling
                                                                   else "head.weight"])


def test_fused_kernel_gradient_matches_autograd_on_one_batch():
    rng = np.random.default_rng(7)
    batch = random_batch(rng, 64)
    for dueling in (False, True):
        fused = make_learner(dueling=dueling, kernel="fused_mlp", max_grad_norm=None)
        autograd = make_learner(dueling=dueling, kernel="autograd", max_grad_norm=None)
        res_f, res_a = fused.gradient(batch), autograd.gradient(batch)
        grads_fused, grads_auto = grads_of(fused), grads_of(autograd)
        for name, grad in grads_auto.items():
            np.testing.assert_allclose(grads_fused[name], grad, atol=1e-6, rtol=1e-5, err_msg=name)
        assert res_f.metrics["grad_norm"] == pytest.approx(res_a.metrics["grad_norm"], rel=1e-5)


def test_auto_kernel_picks_fused_for_mlp_only_and_fused_rejects_cnn():
    assert make_learner(kernel="auto")._fused is not None
    with pytest.raises(ValueError):
        DQNLearner(NatureCNN((4, 84, 84), 2, [8]), LearnerConfig(kernel="fused_mlp", device="cpu"))
    assert DQNLearner(NatureCNN((4, 84, 84), 2, [8]), LearnerConfig(kernel="auto", device="cpu"))._fused is None


# ---- the step's pieces ----

@pytest.mark.parametrize("kernel", ["fused_mlp", "autograd"])
@pytest.mark.parametrize("max_grad_norm", [None, 0.1])
def test_gradient_then_apply_gradient_equals_step(kernel, max_grad_norm):
    """gradient -> apply_gradient (the vector handed back, or what flat_grads holds) is step."""
    a = make_learner(kernel=kernel, max_grad_norm=max_grad_norm, target_update_period=3)
    b = make_learner(kernel=kernel, max_grad_norm=max_grad_norm, target_update_period=3)
    rng = np.random.default_rng(2)
    for _ in range(7):
        batch = random_batch(rng)
        before = params(b)
        result_a = a.step(batch)
        result_b = b.gradient(batch)
        grads = b.flat_grads.numpy().copy()
        assert_params_close(params(b), before)              # gradient changes nothing
        if max_grad_norm is not None:
            norm = float(np.linalg.norm(grads.astype(np.float64)))
            assert norm <= max_grad_norm * (1 + 1e-4)         # the gradient left is clipped
        b.apply_gradient(grads if b.updates % 2 else None)   # by vector, or in place
        np.testing.assert_array_equal(result_a.priorities, result_b.priorities)
        assert result_a.metrics == result_b.metrics
        assert_params_close(params(a), params(b))
        assert_params_close(params(a, "target"), params(b, "target"))
    assert a.updates == b.updates == 7


@pytest.mark.parametrize("kernel", ["fused_mlp", "autograd"])
def test_flat_gradient_and_flat_weights_are_the_dict_forms(kernel):
    """The shared-memory server channel's forms: gradient() + apply_gradient(vector) is step(), and
    flat weights set from another learner (online and target) act as set_weights does, the fused
    kernel included (the target is copied into its parameters, never rebound)."""
    a = make_learner(kernel=kernel, target_update_period=3)
    rng = np.random.default_rng(3)
    for _ in range(5):   # a's target now differs from its online network
        a.step(random_batch(rng))
    c = copy.deepcopy(a)
    for _ in range(3):   # 8 updates in all: the target is from update 6
        batch = random_batch(rng)
        result_a, result_c = a.step(batch), c.gradient(batch)
        c.apply_gradient(c.flat_grads.numpy().copy())
        np.testing.assert_array_equal(result_a.priorities, result_c.priorities)
        assert_params_close(params(a), params(c))
        assert_params_close(params(a, "target"), params(c, "target"))

    online, target = a.get_flat_weights()
    assert not np.array_equal(online, target)
    b = make_learner(seed=1, kernel=kernel)
    b.set_flat_weights(online, target)
    assert_params_close(params(a), params(b))
    assert_params_close(params(a, "target"), params(b, "target"))
    batch = random_batch(rng)
    np.testing.assert_array_equal(b.gradient(batch).priorities, a.gradient(batch).priorities)   # same target used
    online_then, target_then = params(a), params(b, "target")
    a.step(batch)
    b.set_flat_weights(None, a.get_flat_weights()[0])   # the target alone
    assert_params_close(params(b, "target"), params(a))
    assert_params_close(params(b), online_then)
    assert not all(torch.equal(v, target_then[k]) for k, v in params(b, "target").items())


def test_grad_norm_metric_is_the_norm_before_clipping():
    rng = np.random.default_rng(12)
    batch = random_batch(rng)
    free, capped = make_learner(max_grad_norm=None), None
    free.gradient(batch)
    unclipped = grads_of(free)
    norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in unclipped.values()))
    capped = make_learner(max_grad_norm=norm / 4)
    result = capped.gradient(batch)
    clipped = grads_of(capped)
    assert result.metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)
    for name in unclipped:   # clipping scales the whole gradient by one factor
        np.testing.assert_allclose(clipped[name], unclipped[name] / 4, rtol=1e-4, atol=1e-7)


def test_step_returns_priorities_equal_to_abs_td_errors():
    learner = make_learner(kernel="autograd", double_dqn=False)
    batch = random_batch(np.random.default_rng(3), 8)
    with torch.no_grad():
        q = learner.online(torch.from_numpy(batch.obs))
        q_taken = q.gather(1, torch.from_numpy(batch.action)[:, None]).squeeze(1).numpy()
        next_max = learner.target(torch.from_numpy(batch.next_obs)).max(1).values.numpy()
    y = batch.reward + batch.discount * (~batch.terminated) * next_max
    result = learner.step(batch)
    assert result.priorities.shape == (8,)
    np.testing.assert_allclose(result.priorities, np.abs(q_taken - y), rtol=1e-5, atol=1e-6)
    assert result.metrics["q_mean"] == pytest.approx(float(q_taken.mean()), rel=1e-5, abs=1e-6)


# ---- weights and state ----

def test_get_weights_set_weights_round_trip():
    a, b = make_learner(seed=0), make_learner(seed=1)
    weights = a.get_weights()
    assert all(isinstance(v, np.ndarray) for v in weights.values())
    assert set(weights) == set(a.online.state_dict())
    assert not all(np.array_equal(weights[k], v) for k, v in b.get_weights().items())
    b.set_weights(weights)
    for k, v in b.get_weights().items():
        np.testing.assert_array_equal(v, weights[k])
    # get_weights is a copy: training a does not change the dict handed out
    snapshot = {k: v.copy() for k, v in weights.items()}
    a.step(random_batch(np.random.default_rng(4)))
    for k in weights:
        np.testing.assert_array_equal(weights[k], snapshot[k])
    # set_weights moves the online net only; the learner keeps working afterwards
    b.step(random_batch(np.random.default_rng(4)))


def _trained(kernel: str, rng: np.random.Generator) -> DQNLearner:
    learner = make_learner(seed=0, kernel=kernel, target_update_period=4)
    for _ in range(6):
        learner.step(random_batch(rng))
    return learner


def _assert_continue_identically(a: DQNLearner, b: DQNLearner, rng: np.random.Generator) -> None:
    assert b.updates == a.updates
    assert_params_close(params(b), params(a))
    assert_params_close(params(b, "target"), params(a, "target"))
    for _ in range(3):   # the optimizer's moments came along too: identical continued updates
        batch = random_batch(rng)
        ra, rb = a.step(batch), b.step(batch)
        np.testing.assert_array_equal(ra.priorities, rb.priorities)
        assert_params_close(params(b), params(a))
        assert_params_close(params(b, "target"), params(a, "target"))


@pytest.mark.parametrize("kernel", ["fused_mlp", "autograd"])
def test_state_dict_through_torch_save_continues_identically(kernel):
    """The checkpoint path: torch.save -> torch.load -> load_state_dict into a fresh learner."""
    rng = np.random.default_rng(5)
    a = _trained(kernel, rng)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_learner(seed=9, kernel=kernel, target_update_period=4)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    _assert_continue_identically(a, fresh, rng)


@pytest.mark.parametrize("kernel", ["fused_mlp", "autograd"])
def test_state_dict_in_memory_continues_identically(kernel):
    """Loading another learner's state_dict in the same process must not tie the two learners together
    (they must not share Adam moments or parameters afterwards)."""
    rng = np.random.default_rng(5)
    a = _trained(kernel, rng)
    fresh = make_learner(seed=9, kernel=kernel, target_update_period=4)
    fresh.load_state_dict(a.state_dict())
    _assert_continue_identically(a, fresh, rng)


@pytest.mark.parametrize("kernel", ["fused_mlp", "autograd"])
def test_a_deep_copy_trains_on_its_own(kernel):
    """The parameters are views of one flat buffer that the optimizer updates: a deep copy must be
    a learner whose parameters are views of its own buffer (not detached copies that never move),
    and training it must leave the original alone."""
    rng = np.random.default_rng(6)
    a = _trained(kernel, rng)
    b = copy.deepcopy(a)
    before = params(a)
    batch = random_batch(rng)
    b.step(batch)
    assert_params_close(params(a), before)
    assert not all(torch.equal(v, before[k]) for k, v in params(b).items())
    a.step(batch)
    _assert_continue_identically(a, b, rng)


def test_state_dict_is_a_snapshot():
    """state_dict() taken before more updates restores the learner to that point."""
    rng = np.random.default_rng(13)
    a = _trained("autograd", rng)
    b = make_learner(seed=9, kernel="autograd", target_update_period=4)
    b.load_state_dict(copy.deepcopy(a.state_dict()))     # a reference copy of the same moment
    state = a.state_dict()
    a.step(random_batch(np.random.default_rng(99)))      # a detour, then roll back
    a.load_state_dict(state)
    _assert_continue_identically(a, b, rng)


@pytest.mark.parametrize("kernel", ["fused_mlp", "autograd"])
def test_hard_target_update_exactly_every_period(kernel):
    period = 4
    learner = make_learner(kernel=kernel, target_update_period=period, target_update="hard")
    assert_params_close(params(learner, "target"), params(learner))    # starts as a copy
    rng = np.random.default_rng(6)
    for update in range(1, 13):
        target_before = params(learner, "target")
        learner.step(random_batch(rng))
        assert learner.updates == update
        if update % period == 0:
            assert_params_close(params(learner, "target"), params(learner))
        else:
            assert_params_close(params(learner, "target"), target_before)
            assert not torch.equal(params(learner, "target")["head.weight"], params(learner)["head.weight"])


def test_soft_target_update_after_every_step():
    learner = make_learner(kernel="autograd", target_update="soft", tau=0.25)
    target_before = params(learner, "target")
    learner.step(random_batch(np.random.default_rng(8)))
    online = params(learner)
    for k, v in params(learner, "target").items():
        torch.testing.assert_close(v, 0.25 * online[k] + 0.75 * target_before[k])


def test_target_network_is_not_trained():
    learner = make_learner(kernel="autograd", target_update_period=1000)
    target_before = params(learner, "target")
    rng = np.random.default_rng(10)
    for _ in range(5):
        learner.step(random_batch(rng))
    assert_params_close(params(learner, "target"), target_before)
    assert not any(p.requires_grad for p in learner.target.parameters())


# ---- it learns ----

@pytest.mark.parametrize("kernel", ["fused_mlp", "autograd"])
@pytest.mark.parametrize("dueling", [False, True])
def test_update_descends_a_fixed_regression(kernel, dueling):
    """reward 1 and terminated always: the target is exactly 1, so Q(s, a_taken) must approach 1."""
    learner = make_learner(kernel=kernel, dueling=dueling, lr=1e-2, max_grad_norm=10.0,
                           target_update_period=10)
    rng = np.random.default_rng(11)
    obs = rng.normal(size=(64, OBS_DIM)).astype(np.float32)
    action = rng.integers(0, NUM_ACTIONS, 64).astype(np.int64)
    batch = Batch(obs=obs, action=action, reward=np.ones(64, np.float32),
                  next_obs=rng.normal(size=(64, OBS_DIM)).astype(np.float32),
                  terminated=np.ones(64, bool), discount=np.full(64, 0.99, np.float32),
                  indices=np.arange(64), weights=np.ones(64, np.float32))

    def error() -> float:
        with torch.no_grad():
            q = learner.online(torch.from_numpy(obs))
            q = q.gather(1, torch.from_numpy(action)[:, None]).squeeze(1)
        return float((q - 1.0).abs().mean())

    start = error()
    losses = [learner.step(batch).metrics["loss"] for _ in range(300)]
    assert start > 0.5
    assert error() < 0.05
    assert losses[-1] < losses[0] / 20


# ---- what the data-parallel topologies use: a gradient averaged in place, advance, target weights ----

def test_a_gradient_averaged_in_place_is_the_one_applied():
    """gradient -> average flat_grads in place -> apply_gradient() (the all-reduce path) applies
    the averaged gradient, as apply_gradient(averaged vector) does, and not the local one."""
    batch = random_batch(np.random.default_rng(5))
    a, b, c = make_learner(seed=2), make_learner(seed=2), make_learner(seed=2)
    a.gradient(batch)
    a.flat_grads.mul_(0.5)
    a.apply_gradient()
    b.gradient(batch)
    b.apply_gradient(b.flat_grads.numpy() * 0.5)
    c.step(batch)
    assert_params_close(params(a), params(b))
    assert not all(torch.equal(v, params(c)[k]) for k, v in params(a).items())
    assert a.updates == b.updates == 1


def test_advance_counts_updates_and_makes_the_hard_target_copies_they_would():
    learner = make_learner(target_update_period=5)
    learner.step(random_batch(np.random.default_rng(0)))             # update 1: no copy
    assert learner.target_version == 0
    learner.advance(3)                                                # updates 2-4: no multiple of 5
    assert learner.updates == 4 and learner.target_version == 0
    assert not torch.equal(params(learner)["head.weight"], params(learner, "target")["head.weight"])
    learner.advance(3)                                                # updates 5-7: crosses 5
    assert learner.updates == 7 and learner.target_version == 7
    assert_params_close(params(learner), params(learner, "target"))


def test_advance_soft_equals_k_soft_updates_toward_fixed_weights():
    a = make_learner(target_update="soft", tau=0.1)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in a.online.parameters():
            p.add_(1.0)
        for p in b.online.parameters():
            p.add_(1.0)
    a.advance(3)
    for step in range(1, 4):
        b.target_updater.after_update(step, b.target, b.online)
    assert_params_close(params(a, "target"), params(b, "target"), atol=1e-6)


def test_a_learner_that_does_not_own_its_target_never_changes_it():
    learner = make_learner(target_update_period=1, owns_target=False)
    before = params(learner, "target")
    for _ in range(3):
        learner.step(random_batch(np.random.default_rng(1)))
    assert_params_close(params(learner, "target"), before)


def test_set_weights_with_target():
    a, b = make_learner(seed=0), make_learner(seed=1)
    b.set_weights(a.get_weights(), a.get_target_weights())
    assert_params_close(params(a), params(b))
    assert_params_close(params(a, "target"), params(b, "target"))
