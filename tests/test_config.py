"""The config: presets load by name, the CartPole preset is the defaults, overrides and YAML floats parse."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from distdqn.config import Config, load_config, preset_names
from distdqn.errors import ConfigError
from tests.helpers import REPO


def test_cartpole_preset_is_the_default():
    assert load_config("cartpole") == Config()


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_valid(name):
    cfg = load_config(name)
    assert cfg.env.id


def test_a_preset_file_still_loads_by_its_path():
    assert load_config(REPO / "distdqn" / "presets" / "acrobot.yaml") == load_config("acrobot")


def test_an_unknown_name_lists_the_presets():
    with pytest.raises(ConfigError) as raised:
        load_config("cartpol")
    assert str(raised.value) == f"cartpol: no such config file or preset (presets: {', '.join(preset_names())})"


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


def test_a_validated_config_is_never_rewritten():
    cfg = load_config(None)
    with pytest.raises(ValidationError):
        cfg.learner.lr = 1.0
    with pytest.raises(ValidationError):
        cfg.cluster.address = "10.0.0.1:6379"


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


@pytest.mark.parametrize("overrides,message", [
    (["sync_ps.min_workers=3"], "sync_ps.min_workers: must be <= workers.num_workers"),
    (["federated.clients=[{attributes: {length: 0.7}}]"], "federated.clients: one entry per client"),
    (["federated.dp.mode=central"], "federated.dp.clip: needed by federated.dp.mode=central"),
    (["federated.dp.mode=central", "federated.dp.clip=1.0", "federated.aggregator=median"],
     "federated.aggregator: federated.dp.mode=central noises a sum"),
    (["federated.late_updates=stale_weighted", "federated.aggregator=median"],
     "federated.late_updates: stale_weighted weights updates"),
    (["federated.late_updates=stale_weighted", "federated.dp.mode=central", "federated.dp.clip=1.0"],
     "federated.late_updates: stale_weighted cannot be used with federated.dp.mode=central"),
    (["federated.dp.mode=global"], "federated.dp.mode: Input should be 'off', 'central' or 'local'"),
    (["federated.server_optimizer=sgd"], "federated.server_optimizer"),
    (["federated.dp.delta=1.5"], "federated.dp.delta"),
    (["federated.dp.mode=local", "federated.dp.clip=1.0", "federated.dp.delta=0.5"],
     "federated.dp.delta: must be below 1 / workers.num_workers = 0.5"),
    (["federated.dp_clip=1.0"], "federated.dp_clip: unknown key"),
    (["topology=gossip"], "topology"),
    (["network.atoms=51", "network.v_min=5", "network.v_max=5"], "network.v_max: must be above network.v_min"),
    (["network.atoms=51", "learner.kernel=fused_mlp"], "learner.kernel: fused_mlp computes the one-value"),
    (["network.atoms=51", "learner.model_parallel=2"], "learner.model_parallel: the categorical head"),
    (["network.atoms=0"], "network.atoms"),
])
def test_cross_field_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(None, overrides)


def test_the_server_learning_rate_follows_the_optimizer_unless_set():
    assert load_config(None).federated.server_learning_rate == 1.0
    assert load_config(None, ["federated.server_optimizer=fedavgm"]).federated.server_learning_rate == 1.0
    assert load_config(None, ["federated.server_optimizer=fedadam"]).federated.server_learning_rate == 0.01
    assert load_config(None, ["federated.server_optimizer=fedyogi",
                              "federated.server_lr=0.1"]).federated.server_learning_rate == 0.1


def test_for_client_merges_the_client_variant_into_env():
    cfg = load_config("cartpole-federated")
    assert cfg.for_client(1).env.attributes == {"length": 0.6, "masspole": 0.12}
    assert cfg.for_client(1).learner == cfg.learner
    assert cfg.env.attributes == {}
    assert load_config(None).for_client(0) == load_config(None)


def test_env_attributes_change_the_physics_and_unknown_ones_are_errors():
    from distdqn.config import EnvConfig
    from distdqn.envs import env_info, make_vector_env
    from distdqn.errors import EnvironmentSpecError
    env = make_vector_env(EnvConfig(attributes={"length": 1.0, "masspole": 0.2}), 2).unwrapped
    assert env.length == 1.0 and env.polemass_length == pytest.approx(0.2) and env.total_mass == pytest.approx(1.2)
    with pytest.raises(EnvironmentSpecError, match="env.attributes.lenght"):
        env_info(EnvConfig(attributes={"lenght": 1.0}))


def test_step_latency_waits_without_using_the_cpu():
    """env.step_latency_ms: every vector step answers that much later, the process asleep meanwhile."""
    import time

    from distdqn.config import EnvConfig
    from distdqn.envs import make_vector_env
    env = make_vector_env(EnvConfig(step_latency_ms=10.0), 4)
    env.reset(seed=0)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(30):
        env.step(env.action_space.sample())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall >= 0.3 and cpu < 0.5 * wall
    env.close()


@pytest.mark.parametrize("kind, sizes", [("mlp", [128, 128]), ("nature_cnn", [512]), ("minatar_cnn", [128])])
def test_hidden_sizes_default_to_the_kinds_own_and_a_set_value_wins(kind, sizes):
    cfg = load_config(None, [f"network.kind={kind}"])
    assert cfg.network.layers == sizes and cfg.network.hidden_sizes is None   # derived, not written back
    assert cfg.to_dict()["network"]["hidden_sizes"] == sizes                 # the run records what it used
    assert load_config(None, [f"network.kind={kind}", "network.hidden_sizes=[64]"]).network.layers == [64]


def test_every_registered_transport_is_a_config_value_and_cheapest_first():
    from typing import get_args

    from distdqn.config import AsyncPSConfig, SyncPSConfig
    from distdqn.runtime.updates.transports import PATHS
    for section in (SyncPSConfig, AsyncPSConfig):
        assert get_args(section.model_fields["transport"].annotation) == ("auto", *PATHS, "ray")
    assert PATHS == ("shm", "tcp")   # auto takes the first that reaches
