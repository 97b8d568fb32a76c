"""Every common observation space: stored as arrays (envs.py: observation_layout), encoded at the
network's input (one-hot indices, core/networks.py), images matched to the CNN kinds; each trains a
step from the Python API; the spaces and action spaces DQN cannot take are one line saying what
to use instead."""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import pytest
import torch

import distdqn
from distdqn.config import LearnerConfig
from distdqn.core.learner import DQNLearner
from distdqn.core.networks import (
    InputEncoding,
    MLPQNetwork,
    ObservationEncoder,
    Segment,
    auto_kind,
    encode_numpy,
)
from distdqn.core.policy import NumpyMLPPolicy, TorchPolicy
from distdqn.core.transitions import Batch
from distdqn.envs import ObservationArray, observation_layout, stored_batch
from tests.helpers import run_cli
from tests.test_cli_errors import assert_user_error

torch.set_num_threads(1)

Box, Discrete, MultiDiscrete, MultiBinary = gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary


# ---- the encoding, against values worked out by hand ----

MIXED = InputEncoding((Segment(1, 4, 0), Segment(2), Segment(2, 3, 1)))   # Discrete(4), 2 numbers, 2 x Discrete(3, start=1)


def test_one_hot_encoding_gives_the_hand_computed_inputs():
    rows = np.array([[2, 0.5, -1.0, 1, 3],
                     [3, 1.0, 2.0, 2, 1]], dtype=np.float32)
    expected = np.array([[0, 0, 1, 0, 0.5, -1.0, 1, 0, 0, 0, 0, 1],
                         [0, 0, 0, 1, 1.0, 2.0, 0, 1, 0, 1, 0, 0]], dtype=np.float32)
    assert MIXED.size == 5 and MIXED.width == 12
    np.testing.assert_array_equal(encode_numpy(MIXED, rows), expected)
    np.testing.assert_array_equal(ObservationEncoder(MIXED)(torch.from_numpy(rows)).numpy(), expected)


def test_an_index_outside_its_space_stays_in_its_own_one_hot_block():
    rows = np.array([[9, 0, 0, 0, 7]], dtype=np.int64)    # 9 in Discrete(4), 0 below start 1, 7 above
    out = encode_numpy(MIXED, rows)
    assert out[0, :4].tolist() == [0, 0, 0, 1] and out[0, 6:9].tolist() == [1, 0, 0] and out[0, 9:].tolist() == [0, 0, 1]
    np.testing.assert_array_equal(ObservationEncoder(MIXED)(torch.from_numpy(rows)).numpy(), out)


def test_an_encoded_network_keeps_its_weights_and_the_numpy_policy_agrees():
    torch.manual_seed(0)
    net = MLPQNetwork(MIXED.width, 3, [16], encoding=MIXED)
    assert list(net.state_dict()) == ["hidden.0.weight", "hidden.0.bias", "head.weight", "head.bias"]
    rows = np.array([[0, 0.1, 0.2, 1, 2], [3, -1, 1, 3, 3]], dtype=np.float32)
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    numpy_q = NumpyMLPPolicy(weights, dueling=False, encoding=MIXED).q_values(rows)
    np.testing.assert_allclose(numpy_q, TorchPolicy(net).q_values(rows), atol=1e-6)
    np.testing.assert_array_equal(NumpyMLPPolicy(weights, False, MIXED).weights()["head.weight"], weights["head.weight"])


def test_the_fused_update_equals_autograd_on_one_hot_inputs():
    encoding = InputEncoding((Segment(1, 16, 0),))
    rng = np.random.default_rng(3)
    batch = Batch(obs=rng.integers(0, 16, (32, 1)), action=rng.integers(0, 4, 32), reward=rng.normal(size=32).astype(np.float32),
                  next_obs=rng.integers(0, 16, (32, 1)), terminated=rng.random(32) < 0.2,
                  discount=np.full(32, 0.97, np.float32), indices=np.arange(32), weights=np.ones(32, np.float32))
    grads = []
    for kernel in ("fused_mlp", "autograd"):
        torch.manual_seed(1)
        learner = DQNLearner(MLPQNetwork(16, 4, [32], encoding=encoding), LearnerConfig(kernel=kernel, max_grad_norm=None))
        assert (learner._fused is not None) == (kernel == "fused_mlp")
        learner.gradient(batch)
        grads.append(learner.flat_grads.clone().numpy())
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)


# ---- layouts: what the replay stores for each space ----

NESTED = gym.spaces.Dict({"position": Discrete(5), "sensors": Box(-1, 1, (2, 2)),
                          "flags": MultiBinary(3), "inner": gym.spaces.Tuple((Discrete(2, start=-1), MultiDiscrete([3, 4])))})


@pytest.mark.parametrize(("space", "shape", "dtype", "width"), [
    (Discrete(7, start=2), (1,), np.int64, 7),
    (MultiDiscrete([3, 4]), (2,), np.int64, 7),
    (MultiBinary(5), (5,), np.int64, None),
    (gym.spaces.Tuple((Discrete(3), Box(0, 1, (2,)))), (3,), np.float32, 5),
    (NESTED, (3 + 1 + 2 + 1 + 4,), np.float32, 3 + 2 + 3 + 4 + 5 + 4),   # flags, inner, position, sensors
])
def test_each_space_is_stored_as_one_row(space, shape, dtype, width):
    layout = observation_layout(space)
    assert layout.space.shape == shape and layout.space.dtype == dtype
    assert (layout.encoding.width if layout.encoding else None) == width
    space.seed(0)
    sample = space.sample()
    row = layout.apply(sample)
    assert row.shape == shape and layout.space.contains(row)
    rows, single = stored_batch(layout, space, sample)
    assert single and np.array_equal(rows[0], row)


def test_a_dict_row_holds_the_sorted_keys_values_and_a_batch_of_dicts_is_rows():
    layout = observation_layout(NESTED)
    obs = {"sensors": np.array([[0.1, 0.2], [0.3, 0.4]]), "position": 4, "flags": np.array([1, 0, 1]),
           "inner": (0, np.array([2, 3]))}
    np.testing.assert_allclose(layout.apply(obs), [1, 0, 1, 0, 2, 3, 4, 0.1, 0.2, 0.3, 0.4])  # flags, inner, position, sensors
    batch = {k: np.stack([v, v]) for k, v in obs.items() if k != "inner"}
    batch["inner"] = (np.array([0, -1]), np.array([[2, 3], [0, 0]]))
    rows, single = stored_batch(layout, NESTED, batch)
    assert not single and rows.shape == (2, 11) and rows[1, 3] == -1


@pytest.mark.parametrize(("space", "stored", "kind"), [
    (Box(0, 255, (64, 48, 3), np.uint8), (3, 64, 48), "nature_cnn"),    # RGB, channels last -> first
    (Box(0, 255, (4, 84, 84), np.uint8), (4, 84, 84), "nature_cnn"),    # stacked frames as they are
    (Box(0, 255, (50, 60), np.uint8), (1, 50, 60), "nature_cnn"),       # one grayscale frame
    (Box(0, 1, (10, 10, 4), np.bool_), (10, 10, 4), "minatar_cnn"),     # a MinAtar board
    (Box(0, 255, (8, 8, 3), np.uint8), (8, 8, 3), "minatar_cnn"),       # a small board of pixels
    (Box(-1, 1, (3, 5)), (3, 5), "mlp"),                                # numbers of any shape
    (Box(0, 255, (20, 20, 3), np.uint8), (20, 20, 3), "minatar_cnn"),
])
def test_images_are_matched_to_the_cnn_kinds_their_shape_fits(space, stored, kind):
    layout = observation_layout(space)
    assert layout.space.shape == stored
    assert auto_kind(layout.space.shape, layout.space.dtype) == kind
    image = space.sample()
    np.testing.assert_array_equal(np.asarray(layout.apply(image)).reshape(-1),
                                  (np.moveaxis(image, -1, 0) if layout.transform == "channels_first" else image).reshape(-1))


# ---- every space trains a step, from the Python API ----

class SpaceEnv(gym.Env):
    """Observations drawn from ``observation_space``, two actions, reward 1 for action 1, 5 steps."""

    def __init__(self, observation_space: gym.Space, actions: gym.Space | None = None):
        self.observation_space = observation_space
        self.action_space = actions or Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action == 1), self.t >= 5, False, {}


SPACES = {
    "discrete": Discrete(6), "multidiscrete": MultiDiscrete([2, 3, 4]), "multibinary": MultiBinary(4),
    "box_2d": Box(-1, 1, (3, 2)), "dict": NESTED, "tuple": gym.spaces.Tuple((Discrete(3), Box(0, 1, (2,)))),
    "image_channels_last": Box(0, 255, (40, 40, 3), np.uint8), "board": Box(0, 1, (6, 6, 2), np.bool_),
}
TINY = {"train.total_env_steps": 160, "train.learning_starts": 32, "learner.batch_size": 16,
        "eval.interval_env_steps": 80, "eval.num_envs": 5, "env.num_envs": 4, "log.progress": False,
        "network.hidden_sizes": [16], "replay.capacity": 500, "train.torch_threads": 1}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_observation_space_trains_a_step(tmp_path, name):
    space = SPACES[name]
    run = distdqn.train(env=functools.partial(SpaceEnv, space), overrides=TINY, run_dir=tmp_path / "run", verbose=False)
    assert run.summary["learner_updates"] > 0 and run.summary["env_steps"] >= 160
    agent = run.load()
    space.seed(1)
    assert agent.act(space.sample()) in (0, 1)
    batch = [space.sample() for _ in range(3)]
    stacked = (np.stack(batch) if not isinstance(space, gym.spaces.Dict | gym.spaces.Tuple) else None)
    if stacked is not None:
        assert agent.q_values(stacked).shape == (3, 2)


def test_a_discrete_action_space_that_does_not_start_at_zero_is_acted_in(tmp_path):
    run = distdqn.train(env=functools.partial(SpaceEnv, Box(-1, 1, (2,)), Discrete(2, start=1)), overrides=TINY,
                        run_dir=tmp_path / "run", verbose=False)
    assert run.load().act(np.zeros(2, np.float32)) in (1, 2)


def test_continuous_actions_train_through_the_discretizing_wrapper(tmp_path):
    run = distdqn.train(env="Pendulum-v1", overrides={**TINY, "env.wrappers": [
        {"wrapper": "gymnasium.wrappers:DiscretizeAction", "kwargs": {"bins": 5}}]}, run_dir=tmp_path / "run",
        verbose=False)
    assert run.summary["learner_updates"] > 0 and run.load().info.num_actions == 5


# ---- refusals: one line, what to do instead, nothing written ----

def text_env():
    return SpaceEnv(gym.spaces.Text(8))


def graph_in_dict_env():
    return SpaceEnv(gym.spaces.Dict({"graph": gym.spaces.Graph(Box(0, 1, (2,)), None), "x": Discrete(2)}))


def sequence_env():
    return SpaceEnv(gym.spaces.Sequence(Discrete(3)))


def multidiscrete_actions_env():
    return SpaceEnv(Box(-1, 1, (2,)), MultiDiscrete([2, 2]))


@pytest.mark.parametrize(("overrides", "fragments"), [
    (["env.make=tests.test_observation_spaces:text_env"], ["has Text observations", "token ids", "env.wrappers"]),
    (["env.make=tests.test_observation_spaces:graph_in_dict_env"], ["Graph observations at observation['graph']"]),
    (["env.make=tests.test_observation_spaces:sequence_env"], ["Sequence observations", "pad"]),
    (["env.id=Pendulum-v1"], ["continuous actions", "DiscretizeAction", "SAC, TD3"]),
    (["env.make=tests.test_observation_spaces:multidiscrete_actions_env"], ["MultiDiscrete actions", "one Discrete"]),
])
def test_what_dqn_cannot_take_is_one_line_saying_what_to_use(tmp_path, overrides, fragments):
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir)]
    for o in overrides:
        args += ["--set", o]
    assert_user_error(run_cli(args), *fragments)
    assert not run_dir.exists()


def test_the_observation_wrapper_is_distdqns_last():
    env = SpaceEnv(NESTED)
    wrapped = ObservationArray(env, observation_layout(NESTED))
    obs, _ = wrapped.reset(seed=0)
    assert obs.shape == (11,) and wrapped.observation_space.contains(obs)
