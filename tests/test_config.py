"""The config: presets load, the CartPole preset is the defaults, overrides and YAML floats parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from distdqn.config import Config, load_config
from distdqn.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_cartpole_preset_is_the_default():
    assert load_config(CONFIGS / "cartpole.yaml") == Config()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_is_valid(path):
    cfg = load_config(path)
    assert cfg.env.id


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["learner.lr=1e-4", "network.hidden_sizes=[32, 16]", "replay.prioritized=true",
                             "eval.solve_threshold=200"])
    assert cfg.learner.lr == 1e-4 and isinstance(cfg.learner.lr, float)
    assert cfg.network.hidden_sizes == [32, 16]
    assert cfg.replay.prioritized is True
    assert cfg.eval.solve_threshold == 200


def test_yaml_exponent_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  lr: 3e-4\n  adam_eps: 1.5E-4\n")
    cfg = load_config(path)
    assert cfg.learner.lr == 3e-4 and cfg.learner.adam_eps == 1.5e-4


def test_seed_argument_wins():
    assert load_config(None, ["seed=3"], seed=9).seed == 9


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["learner.lr=1e-3", "env.kwargs={sutton_barto_reward: true}"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="learner.lr"):
        load_config(None, ["learner.lr.x=1"])


def test_derived_learning_start_covers_a_batch():
    cfg = load_config(None, ["train.learning_starts=0", "learner.batch_size=32"])
    assert cfg.learning_starts_env_steps == 32
