"""`distdqn train | evaluate | plot` end to end: the run directory, determinism, resume, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from distdqn.metrics import read_metrics
from tests.helpers import REPO, SHORT_RUN, run_cli

TIME_FIELDS = {"wall_s", "env_steps_per_s", "updates_per_s", "learner_busy_s"}


def test_run_directory_layout(short_run):
    assert sorted(p.name for p in short_run.iterdir()) == [
        "checkpoints", "config.yaml", "metrics.jsonl", "summary.json", "tensorboard"]
    config = yaml.safe_load((short_run / "config.yaml").read_text())
    assert config["seed"] == 3 and config["train"]["total_env_steps"] == 3000  # resolved, with overrides

    rows = read_metrics(short_run)
    assert len(rows) >= 3
    required = {"wall_s", "env_steps", "learner_updates", "episode_return_mean", "loss",
                "env_steps_per_s", "updates_per_s"}
    for row in rows:
        assert required <= row.keys()
    assert [r["env_steps"] for r in rows] == sorted(r["env_steps"] for r in rows)
    assert any(r.get("eval_return_mean") is not None for r in rows)
    assert rows[-1]["learner_updates"] > 0 and rows[-1]["loss"] is None or rows[-1]["loss"] >= 0

    summary = json.loads((short_run / "summary.json").read_text())
    for key in ("solved", "time_to_solve_s", "env_steps_to_solve", "final_eval_return_mean", "wall_s",
                "env_steps", "learner_updates"):
        assert key in summary
    assert summary["env_steps"] >= 3000
    assert summary["learner_updates"] == rows[-1]["learner_updates"]
    assert (short_run / "checkpoints" / "final" / "manifest.json").is_file()
    assert (short_run / "checkpoints" / "latest").read_text().strip() == "final"


def test_tensorboard_events_are_readable(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(short_run / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("learner_updates")]
    assert steps == [r["env_steps"] for r in read_metrics(short_run)]
    assert "eval_return_mean" in events.Tags()["scalars"]


def test_evaluate_command(short_run):
    result = run_cli(["evaluate", str(short_run), "--episodes", "4"])
    assert result.returncode == 0, result.stderr
    assert "mean" in result.stdout and "over 4 episodes" in result.stdout


def test_plot_command(short_run, tmp_path):
    output = tmp_path / "plot.png"
    result = run_cli(["plot", str(short_run), str(short_run), "-o", str(output)])
    assert result.returncode == 0, result.stderr
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size > 10_000


def test_same_seed_same_metrics(tmp_path):
    def metrics(name):
        run_dir = tmp_path / name
        result = run_cli(["train", "--run-dir", str(run_dir), "--seed", "11", *SHORT_RUN])
        assert result.returncode == 0, result.stderr
        return [{k: v for k, v in row.items() if k not in TIME_FIELDS} for row in read_metrics(run_dir)]

    first, second = metrics("a"), metrics("b")
    assert first == second
    assert any(row["loss"] for row in first)


def _final_state(run_dir):
    ckpt = run_dir / "checkpoints" / "final"
    learner = torch.load(ckpt / "learner.pt", weights_only=False)
    replay = torch.load(ckpt / "replicas.pt", weights_only=False)[0]["replay"]
    return learner, replay, json.loads((run_dir / "summary.json").read_text())


def test_resume_continues_as_if_never_stopped(tmp_path):
    common = ["--seed", "5", *SHORT_RUN, "--set", "train.total_env_steps=6000"]
    straight = tmp_path / "straight"
    assert run_cli(["train", "--run-dir", str(straight), *common]).returncode == 0

    split = tmp_path / "split"
    first = run_cli(["train", "--run-dir", str(split), *common, "--set", "train.total_env_steps=3000"])
    assert first.returncode == 0, first.stderr
    resumed = run_cli(["train", "--resume", str(split), "--set", "train.total_env_steps=6000"])
    assert resumed.returncode == 0, resumed.stderr

    learner_a, replay_a, summary_a = _final_state(straight)
    learner_b, replay_b, summary_b = _final_state(split)
    assert summary_a["env_steps"] == summary_b["env_steps"]
    assert summary_a["learner_updates"] == summary_b["learner_updates"] > 0
    assert summary_a["episodes"] == summary_b["episodes"]
    for name, tensor in learner_a["online"].items():
        assert torch.equal(tensor, learner_b["online"][name]), name
    for name, tensor in learner_a["target"].items():
        assert torch.equal(tensor, learner_b["target"][name]), name
    for key in ("obs", "action", "reward", "next_obs", "terminated", "discount"):
        np.testing.assert_array_equal(replay_a[key], replay_b[key])
    # the resumed segment appended to the same metrics file, continuing the env-step axis
    steps = [r["env_steps"] for r in read_metrics(split)]
    assert steps == sorted(steps) and steps[-1] == summary_b["env_steps"]


def test_a_wall_clock_budget_ends_the_run_early_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "--run-dir", str(run_dir), *SHORT_RUN, "--set", "train.total_env_steps=10000000",
                      "--set", "train.max_wall_s=4"])
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "max_wall_s"
    assert 4 <= summary["wall_s"] < 30
    assert 0 < summary["env_steps"] < 10_000_000
    assert (run_dir / "checkpoints" / "final" / "manifest.json").is_file()   # the usual end: final evaluation and checkpoint
    assert read_metrics(run_dir)[-1]["env_steps"] == summary["env_steps"]

    done = tmp_path / "done"
    assert run_cli(["train", "--run-dir", str(done), *SHORT_RUN]).returncode == 0
    assert json.loads((done / "summary.json").read_text())["stop_reason"] == "total_env_steps"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_command_solves_cartpole(tmp_path, seed):
    """`distdqn train` with no config solves CartPole-v1: a 10-episode greedy mean >= 475."""
    run_dir = tmp_path / "run"
    result = run_cli(["train", "--seed", str(seed), "--run-dir", str(run_dir), "--set", "log.progress=false"],
                     cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["solved"], summary
    solving = [r for r in read_metrics(run_dir) if r.get("eval_return_mean") is not None
               and r["eval_return_mean"] >= 475 and r["eval_episodes"] >= 10]
    assert solving and solving[0]["eval_env_steps"] == summary["env_steps_to_solve"]
