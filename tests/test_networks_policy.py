"""Q-networks (MLP, dueling, Nature CNN) and action selection (NumPy MLP policy, epsilon-greedy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distdqn.core.networks import DuelingHead, MLPQNetwork, NatureCNN, build_q_network
from distdqn.core.policy import NumpyMLPPolicy, TorchPolicy, epsilon_greedy, make_policy

torch.set_num_threads(1)


def numpy_weights(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: t.detach().numpy().copy() for name, t in module.state_dict().items()}


@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("hidden", [[], [16], [32, 8]])
def test_mlp_output_shape(dueling, hidden):
    torch.manual_seed(0)
    net = MLPQNetwork(6, 3, hidden, dueling)
    assert net(torch.randn(5, 6)).shape == (5, 3)
    assert net(torch.randn(5, 2, 3)).shape == (5, 3)       # flattens the observation
    assert isinstance(net.head, DuelingHead) == dueling


def test_dueling_identity():
    torch.manual_seed(1)
    net = MLPQNetwork(4, 5, [16], dueling=True)
    obs = torch.randn(7, 4)
    with torch.no_grad():
        q = net(obs)
        features = torch.relu(net.hidden[0](obs))
        value = net.head.value(features)
        advantage = net.head.advantage(features)
    torch.testing.assert_close(q - q.mean(1, keepdim=True), advantage - advantage.mean(1, keepdim=True))
    torch.testing.assert_close(q.mean(1, keepdim=True), value)
    # the advantage is not already centred, so the identity is not trivial
    assert advantage.mean(1).abs().max() > 1e-3


def test_nature_cnn_on_uint8_frames():
    torch.manual_seed(2)
    net = NatureCNN((4, 84, 84), 6, [32])
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        q = net(frames)
        q_float = net(frames.float() / 255.0)
    assert q.shape == (2, 6) and q.dtype == torch.float32
    torch.testing.assert_close(q, q_float)      # uint8 frames are scaled to [0, 1]
    dueling = NatureCNN((4, 84, 84), 6, [], dueling=True)   # default 512 hidden
    with torch.no_grad():
        assert dueling(frames).shape == (2, 6)


def test_build_q_network():
    assert type(build_q_network("mlp", (2, 3), 4, [8])) is MLPQNetwork
    assert build_q_network("mlp", (2, 3), 4, [8]).hidden[0].in_features == 6
    assert type(build_q_network("nature_cnn", (4, 84, 84), 4, [16])) is NatureCNN
    with pytest.raises(ValueError):
        build_q_network("nature_cnn", (8,), 4, [16])
    with pytest.raises(ValueError):
        build_q_network("transformer", (8,), 4, [16])


@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("hidden", [[], [64], [64, 64], [32, 16, 8]])
def test_numpy_policy_matches_torch(dueling, hidden):
    torch.manual_seed(3)
    net = MLPQNetwork(4, 3, hidden, dueling)
    policy = NumpyMLPPolicy(numpy_weights(net), dueling)
    obs = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    obs_copy = obs.copy()
    with torch.no_grad():
        expected = net(torch.from_numpy(obs)).numpy()
    got = policy.q_values(obs)
    assert got.shape == (9, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(obs, obs_copy)      # the observation is not modified in place
    # float64 observations give the same answer
    np.testing.assert_allclose(policy.q_values(obs.astype(np.float64)), expected, atol=1e-5, rtol=1e-5)


def test_numpy_policy_set_weights_follows_new_weights_and_copies():
    torch.manual_seed(4)
    a, b = MLPQNetwork(4, 2, [8]), MLPQNetwork(4, 2, [8])
    weights = numpy_weights(a)
    policy = NumpyMLPPolicy(weights, dueling=False)
    obs = np.ones((3, 4), np.float32)
    before = policy.q_values(obs).copy()
    for w in weights.values():          # mutating the caller's dict after the fact changes nothing
        w += 1.0
    np.testing.assert_array_equal(policy.q_values(obs), before)
    policy.set_weights(numpy_weights(b))
    with torch.no_grad():
        np.testing.assert_allclose(policy.q_values(obs), b(torch.from_numpy(obs)).numpy(), atol=1e-5)


def test_make_policy_picks_numpy_for_mlp_and_torch_otherwise():
    torch.manual_seed(5)
    mlp = MLPQNetwork(4, 2, [8])
    assert isinstance(make_policy("mlp", (4,), 2, [8], False, numpy_weights(mlp)), NumpyMLPPolicy)
    cnn = NatureCNN((4, 84, 84), 3, [16])
    policy = make_policy("nature_cnn", (4, 84, 84), 3, [16], False, numpy_weights(cnn))
    assert isinstance(policy, TorchPolicy)
    frames = np.random.default_rng(1).integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    with torch.no_grad():
        np.testing.assert_allclose(policy.q_values(frames), cnn(torch.from_numpy(frames)).numpy(), atol=1e-5)


# ---- epsilon-greedy ----

Q = np.array([[0.0, 1.0, 0.5], [3.0, -1.0, 2.0], [0.0, 0.0, 7.0], [1.0, 2.0, 3.0]])


def test_epsilon_zero_is_argmax():
    rng = np.random.default_rng(0)
    for _ in range(20):
        np.testing.assert_array_equal(epsilon_greedy(Q, 0.0, rng), [1, 0, 2, 2])


def test_epsilon_one_is_roughly_uniform():
    rng = np.random.default_rng(1)
    q = np.tile(np.array([[0.0, 10.0, 0.0, 0.0]]), (6000, 1))
    actions = epsilon_greedy(q, 1.0, rng)
    freq = np.bincount(actions, minlength=4) / len(actions)
    np.testing.assert_allclose(freq, 0.25, atol=0.025)


def test_intermediate_epsilon_greedy_fraction():
    rng = np.random.default_rng(2)
    q = np.tile(np.array([[0.0, 10.0]]), (20_000, 1))
    actions = epsilon_greedy(q, 0.3, rng)
    # greedy 0.7 + 0.3 / 2 of the random draws
    assert np.mean(actions == 1) == pytest.approx(0.85, abs=0.01)


def test_per_row_epsilon_is_respected():
    rng = np.random.default_rng(3)
    rows = 3000
    q = np.tile(np.array([[0.0, 5.0, 0.0, 0.0, 0.0]]), (rows, 1))
    eps = np.tile(np.array([0.0, 1.0, 0.5]), rows // 3)
    actions = epsilon_greedy(q, eps, rng)
    assert np.all(actions[eps == 0.0] == 1)
    non_greedy = actions != 1
    assert np.mean(non_greedy[eps == 1.0]) == pytest.approx(0.8, abs=0.04)
    assert np.mean(non_greedy[eps == 0.5]) == pytest.approx(0.4, abs=0.05)
