"""C51 (network.atoms > 1): the categorical projection by hand, the head, the policy, and the learner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from distdqn.config import LearnerConfig
from distdqn.core.learner import DQNLearner
from distdqn.core.losses import categorical_targets
from distdqn.core.networks import CategoricalHead, build_q_network
from distdqn.core.policy import TorchPolicy, make_policy
from distdqn.core.transitions import Batch
from distdqn.metrics import read_metrics
from tests.helpers import REPO, run_cli

torch.set_num_threads(1)

SUPPORT = torch.linspace(-2.0, 2.0, 5)   # -2, -1, 0, 1, 2


def project(reward, discount, terminated, next_probs, support=SUPPORT):
    return categorical_targets(torch.tensor(reward, dtype=torch.float32), torch.tensor(discount, dtype=torch.float32),
                               torch.tensor(terminated), torch.tensor(next_probs, dtype=torch.float32), support)


def test_a_terminal_transition_puts_the_reward_between_its_two_neighbours():
    # r = 0.5 lies halfway between atoms 0 (index 2) and 1 (index 3); the next state's distribution is ignored
    target = project([0.5], [0.9], [True], [[0.0, 0.0, 0.0, 0.0, 1.0]])
    assert target.tolist() == [[0.0, 0.0, 0.5, 0.5, 0.0]]


def test_a_shift_by_whole_atoms_moves_the_distribution_and_the_ends_absorb_what_falls_outside():
    # r = 1, discount 1: each atom moves one place up; the mass on 2 (-> 3) is clipped to 2
    target = project([1.0], [1.0], [False], [[0.1, 0.2, 0.3, 0.15, 0.25]])
    np.testing.assert_allclose(target.numpy(), [[0.0, 0.1, 0.2, 0.3, 0.4]], atol=1e-6)
    # far below the support: everything on v_min
    target = project([-7.0], [0.5], [False], [[0.2, 0.2, 0.2, 0.2, 0.2]])
    np.testing.assert_allclose(target.numpy(), [[1.0, 0.0, 0.0, 0.0, 0.0]], atol=1e-6)


def test_a_discount_contracts_the_distribution_toward_the_reward():
    # discount 0.5, r = 0: atom -2 -> -1, atom 1 -> 0.5 (half on 0, half on 1)
    target = project([0.0], [0.5], [False], [[0.6, 0.0, 0.0, 0.4, 0.0]])
    np.testing.assert_allclose(target.numpy(), [[0.0, 0.6, 0.2, 0.2, 0.0]], atol=1e-6)


def test_the_projection_keeps_mass_and_the_mean_inside_the_support():
    rng = np.random.default_rng(0)
    support = torch.linspace(-10.0, 10.0, 51)
    next_probs = torch.softmax(torch.tensor(rng.normal(size=(64, 51)), dtype=torch.float32), dim=1)
    reward = torch.tensor(rng.uniform(-1, 1, 64), dtype=torch.float32)
    discount = torch.full((64,), 0.5)
    terminated = torch.tensor(rng.random(64) < 0.3)
    target = categorical_targets(reward, discount, terminated, next_probs, support)
    torch.testing.assert_close(target.sum(dim=1), torch.ones(64))
    assert (target >= 0).all()
    # |r| <= 1 and discount 0.5 keep every shifted atom inside [-10, 10]: the mean is exact
    expected = reward + discount * (~terminated).float() * (next_probs @ support)
    torch.testing.assert_close(target @ support, expected, atol=1e-5, rtol=0)


def test_atoms_on_the_ends_of_the_support_stay_there():
    target = project([0.0, 0.0], [1.0, 1.0], [False, False], [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    assert target.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]


@pytest.mark.parametrize("kind,shape", [("mlp", (4,)), ("minatar_cnn", (10, 10, 4)), ("nature_cnn", (4, 84, 84))])
@pytest.mark.parametrize("dueling", [False, True])
def test_the_action_values_are_the_means_of_the_categorical_head(kind, shape, dueling):
    torch.manual_seed(0)
    net = build_q_network(kind, shape, 3, [16], dueling, atoms=11, v_min=-1.0, v_max=4.0)
    obs = torch.rand(5, *shape)
    logits = net.logits(obs)
    assert logits.shape == (5, 3, 11)
    torch.testing.assert_close(net(obs), torch.softmax(logits, dim=2) @ torch.linspace(-1.0, 4.0, 11))
    assert not any("support" in key for key in net.state_dict())   # a constant of the config, not a weight
    policy = make_policy(kind, shape, 3, [16], dueling,
                         {k: v.numpy() for k, v in net.state_dict().items()}, 11, -1.0, 4.0)
    assert isinstance(policy, TorchPolicy)
    np.testing.assert_allclose(policy.q_values(obs.numpy()), net(obs).detach().numpy(), rtol=1e-6, atol=1e-6)


def test_a_dueling_categorical_head_centres_the_advantage_in_logit_space():
    torch.manual_seed(0)
    head = CategoricalHead(8, 3, 5, -1.0, 1.0, dueling=True)
    x = torch.randn(4, 8)
    logits = head.logits(x)
    # the mean over actions of the logits is the value stream
    torch.testing.assert_close(logits.mean(dim=1), head.value(x))


def _batch(rng: np.random.Generator, size: int) -> Batch:
    obs = rng.normal(size=(size, 4)).astype(np.float32)
    return Batch(obs=obs, action=rng.integers(0, 3, size).astype(np.int64),
                 reward=rng.choice([0.0, 1.0, 2.5], size).astype(np.float32), next_obs=obs.copy(),
                 terminated=np.ones(size, bool), discount=np.full(size, 0.99, np.float32),
                 indices=np.arange(size, dtype=np.int64), weights=np.ones(size, np.float32))


def test_the_learner_fits_terminal_rewards_and_returns_cross_entropy_priorities():
    """On terminal transitions the target is the reward itself: the learned means approach it, the
    loss falls, and the priorities are the per-transition cross-entropies (positive, one each)."""
    torch.manual_seed(0)
    learner = DQNLearner(build_q_network("mlp", (4,), 3, [32, 32], atoms=21, v_min=-1.0, v_max=4.0),
                         LearnerConfig(lr=3e-3, target_update_period=10))
    assert learner.distributional and learner._fused is None
    batch = _batch(np.random.default_rng(0), 32)
    first = learner.step(batch)
    assert first.priorities.shape == (32,) and (first.priorities > 0).all()
    for _ in range(400):
        last = learner.step(batch)
    assert last.metrics["loss"] < 0.5 * first.metrics["loss"]
    with torch.no_grad():
        q = learner.online(torch.from_numpy(batch.obs))[torch.arange(32), torch.from_numpy(batch.action)]
    np.testing.assert_allclose(q.numpy(), batch.reward, atol=0.15)
    assert abs(last.metrics["q_mean"] - float(batch.reward.mean())) < 0.15


def test_a_categorical_learner_saves_and_loads_its_state():
    torch.manual_seed(0)

    def make() -> DQNLearner:
        return DQNLearner(build_q_network("mlp", (4,), 3, [16], atoms=11), LearnerConfig(lr=1e-2))

    learner, restored = make(), make()
    batch = _batch(np.random.default_rng(1), 16)
    for _ in range(3):
        learner.step(batch)
    restored.load_state_dict(learner.state_dict())
    a, b = learner.step(batch), restored.step(batch)
    assert a.metrics == b.metrics
    np.testing.assert_array_equal(a.priorities, b.priorities)


@pytest.mark.slow
def test_c51_learns_cartpole_through_the_cli(tmp_path):
    """The default command with a categorical head (51 atoms on [0, 100]: CartPole's discounted
    returns) solves CartPole-v1, a 10-episode greedy mean >= 475 (seeds 0-2 did at 6-12k env steps)."""
    run_dir = tmp_path / "run"
    result = run_cli(["train", "--seed", "0", "--run-dir", str(run_dir), "--set", "log.progress=false",
                      "--set", "eval.stop_when_solved=true", "--set", "network.atoms=51",
                      "--set", "network.v_min=0", "--set", "network.v_max=100"], cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["network"]["atoms"] == 51
    evals = [r["eval_return_mean"] for r in read_metrics(run_dir) if r.get("eval_return_mean") is not None]
    assert max(evals) >= 475, evals
