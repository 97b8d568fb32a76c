"""Bad input: a one-line error naming the problem (and the field's path), exit status 2, no
traceback, and no run directory created or overwritten."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import SHORT_RUN, run_cli


def assert_user_error(result, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["replay.alpha=1.5"], ["replay.alpha", "less than or equal to 1"]),
        (["learner.lr=-0.001"], ["learner.lr", "greater than 0"]),
        (["learner.batch_size=128", "replay.capacity=100"], ["learner.batch_size", "replay.capacity"]),
        (["learner.nonsense=3"], ["learner.nonsense", "unknown key"]),
        (["learner.batch_size=big"], ["learner.batch_size", "valid integer"]),
        (["env.num_envs=2.5"], ["env.num_envs", "valid integer"]),
        (["topology=ring"], ["topology"]),
        (["env.id=NoSuchEnv-v9"], ["env.id", "NoSuchEnv-v9"]),
        (["env.id=Pendulum-v1"], ["env.id", "Pendulum-v1", "Discrete"]),
        (["eval.episodes=5"], ["eval.episodes", "greater than or equal to 10"]),
        (["env.attributes={lenth: 1.0}"], ["env.attributes.lenth", "no numeric attribute"]),
        (["topology=federated", "federated.clients=[{}, {attributes: {lenth: 1.0}}]"],
         ["federated.clients[1]", "env.attributes.lenth"]),
        (["topology=federated", "federated.clients=[{}]"], ["federated.clients", "one entry per client"]),
        (["learner.lr=.inf"], ["learner.lr", "finite"]),
        (["eval.solve_threshold=.nan"], ["eval.solve_threshold", "finite"]),
        (["env.attributes={gravity: .nan}"], ["env.attributes.gravity", "finite"]),
        (["replay.capacity=1000000000000"], ["replay.capacity", "less than or equal to"]),
    ],
)
def test_bad_config_is_one_line_and_creates_nothing(tmp_path, overrides, fragments):
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir)]
    for o in overrides:
        args += ["--set", o]
    assert_user_error(run_cli(args), *fragments)
    assert not run_dir.exists()


def test_bad_yaml_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("learner:\n  lr: [unclosed\n")
    run_dir = tmp_path / "run"
    assert_user_error(run_cli(["train", str(config), "--run-dir", str(run_dir)]), "bad.yaml", "YAML")
    assert not run_dir.exists()


def test_wrong_type_in_yaml_names_the_path(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("replay:\n  capacity: lots\n")
    assert_user_error(run_cli(["train", str(config), "--run-dir", str(tmp_path / "run")]),
                      "replay.capacity")


def test_missing_config_file(tmp_path):
    assert_user_error(run_cli(["train", str(tmp_path / "nope.yaml")]), "nope.yaml",
                      "no such config file or preset")


def test_existing_run_dir_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "precious.txt").write_text("keep me")
    assert_user_error(run_cli(["train", "--run-dir", str(run_dir), *SHORT_RUN]), "already exists", "--overwrite")
    assert (run_dir / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in run_dir.iterdir()) == ["precious.txt"]


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_corrupt_checkpoint(tmp_path, short_run):
    run_dir = tmp_path / "run"
    shutil.copytree(short_run, run_dir)
    final = run_dir / "checkpoints" / "final"
    (final / "learner.pt").write_bytes(b"this is not a checkpoint")
    (run_dir / "checkpoints" / "best" / "policy.pt").write_bytes(b"nor is this")
    before = _tree(run_dir)
    assert_user_error(run_cli(["train", "--resume", str(run_dir)]), "corrupt", "learner.pt")
    assert_user_error(run_cli(["evaluate", str(run_dir), "--checkpoint", "latest"]), "corrupt", "learner.pt")
    assert_user_error(run_cli(["evaluate", str(run_dir)]), "corrupt", "best", "policy.pt")   # best by default
    assert _tree(run_dir) == before


def test_truncated_manifest(tmp_path, short_run):
    run_dir = tmp_path / "run"
    shutil.copytree(short_run, run_dir)
    manifest = run_dir / "checkpoints" / "final" / "manifest.json"
    manifest.write_text(manifest.read_text()[:10])
    assert_user_error(run_cli(["train", "--resume", str(run_dir)]), "manifest")


@pytest.mark.parametrize("override", ["network.hidden_sizes=[32]", "network.atoms=51", "env.attributes={length: 0.7}",
                                      "env.max_episode_steps=100", "replay.n_step=5", "learner.gamma=0.9"])
def test_mismatched_checkpoint(tmp_path, short_run, override):
    run_dir = tmp_path / "run"
    shutil.copytree(short_run, run_dir)
    before = _tree(run_dir)
    result = run_cli(["train", "--resume", str(run_dir), "--set", override])
    assert_user_error(result, "does not match", override.split("=")[0])
    assert _tree(run_dir) == before


def test_missing_run_to_resume(tmp_path):
    assert_user_error(run_cli(["train", "--resume", str(tmp_path / "nothing")]), "nothing")


def test_cuda_asked_for_without_a_gpu(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run_dir = tmp_path / "run"
    assert_user_error(run_cli(["train", "--run-dir", str(run_dir), "--set", "learner.device=cuda"]),
                      "learner.device", "CUDA")
    assert not run_dir.exists()


def test_a_checkpoint_of_an_older_layout_gets_one_line_and_is_left_alone(tmp_path, short_run):
    """Checkpoints written before the one RunState schema (format 1: a "replica" component for
    single, dicts of counters per topology) are refused in one line, not half-loaded."""
    import json
    run_dir = tmp_path / "run"
    shutil.copytree(short_run, run_dir)
    manifest = run_dir / "checkpoints" / "final" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 1}))
    before = _tree(run_dir)
    assert_user_error(run_cli(["train", "--resume", str(run_dir)]), "checkpoint format 1", "start a new run")
    assert _tree(run_dir) == before
