"""distdqn's Adam computes exactly what torch.optim.Adam computes, fused kernel and fallback alike."""

from __future__ import annotations

import pytest
import torch

from distdqn.core.optim import Adam


@pytest.mark.parametrize("fused", [True, False])
def test_matches_torch_adam(fused):
    torch.manual_seed(0)
    shapes = [(16, 4), (16,), (2, 16), (2,)]
    ours = [torch.randn(s) for s in shapes]
    theirs = [torch.nn.Parameter(t.clone()) for t in ours]
    reference = torch.optim.Adam(theirs, lr=3e-3, betas=(0.9, 0.99), eps=1e-6)
    adam = Adam(ours, lr=3e-3, betas=(0.9, 0.99), eps=1e-6)
    adam.fused = fused and adam.fused
    for _ in range(25):
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        reference.step()
        adam.step(grads)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours[0], torch.zeros(1))


def test_state_round_trip_continues_identically():
    params = [torch.randn(8, 3), torch.randn(3)]
    adam = Adam(params, lr=1e-2)
    grads = [torch.randn_like(p) for p in params]
    adam.step(grads)
    saved_params, state = [p.clone() for p in params], adam.state_dict()
    adam.step(grads)
    after_two = [p.clone() for p in params]

    restored_params = [p.clone() for p in saved_params]
    restored = Adam(restored_params, lr=1e-2)
    restored.load_state_dict(state)
    restored.step(grads)
    for a, b in zip(restored_params, after_two):
        assert torch.equal(a, b)


def test_mismatched_state_is_refused():
    adam = Adam([torch.zeros(4)], lr=1e-3)
    other = Adam([torch.zeros(5)], lr=1e-3).state_dict()
    with pytest.raises(ValueError, match="does not match"):
        adam.load_state_dict(other)


def test_learner_learning_rate_decays_linearly_to_lr_end():
    from distdqn.config import LearnerConfig
    from distdqn.core.learner import DQNLearner
    from distdqn.core.networks import build_q_network

    learner = DQNLearner(build_q_network("mlp", (3,), 2, [8]), LearnerConfig(lr=1e-2, lr_end=1e-3),
                         lr_decay_updates=10)
    grads = torch.zeros_like(learner.flat_grads).numpy()
    seen = []
    for _ in range(15):
        learner.apply_gradient(grads)
        seen.append(learner.optimizer.lr)
    assert seen[0] == pytest.approx(1e-2)
    assert seen[5] == pytest.approx(1e-2 + 0.5 * (1e-3 - 1e-2))
    assert seen[10:] == pytest.approx([1e-3] * 5)
