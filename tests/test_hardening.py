"""Nothing a shared checkpoint, a signal, a full disk or a NaN can do breaks a run or its machine
(issue 24): checkpoints load without unpickling code; SIGTERM and SIGINT end a run with a final
checkpoint; checkpoints are verified and the newest that verifies is used; a failed save is one
line; NaN and infinity are caught where they enter; one writer per run directory; resumed history
is honest; a checkpoint that does not fit is one line."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distdqn.checkpoint import (
    LATEST,
    TMP_PREFIX,
    open_checkpoint,
    save_checkpoint,
    sweep_temporaries,
)
from distdqn.errors import CheckpointWriteError, NonFiniteError
from distdqn.metrics import read_metrics
from tests.helpers import REPO, SHORT_RUN, ray_env, run_cli
from tests.test_cli_errors import assert_user_error


class Payload:
    """What a malicious checkpoint holds: unpickling it runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def rewrite_manifest(ckpt: Path) -> None:
    """Make the manifest vouch for the files as they are now (as whoever shares a tampered
    checkpoint would): sizes and checksums recomputed."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (ckpt / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def copy_run(short_run: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(short_run, run_dir)
    return run_dir


# ---- a shared checkpoint never runs code ----

@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_malicious_learner_is_refused_by_evaluate_and_resume_and_never_runs(tmp_path, short_run, how):
    run_dir = copy_run(short_run, tmp_path)
    final, marker = run_dir / "checkpoints" / "final", tmp_path / "pwned"
    evil = {"online": Payload(marker), "target": {}, "optimizer": {}, "updates": 0, "target_version": 0}
    if how == "torch.save":
        torch.save(evil, final / "learner.pt")
    else:
        (final / "learner.pt").write_bytes(pickle.dumps(evil, protocol=2))
    rewrite_manifest(final)
    for args in (["evaluate", str(run_dir), "--episodes", "10", "--checkpoint", "latest"], ["train", "--resume", str(run_dir)]):
        error = assert_user_error(run_cli(args), "learner.pt", "refused")
        assert "system" in error, error
        assert not marker.exists(), "the checkpoint's payload ran"


def test_evaluate_reads_only_the_weights_and_resume_refuses_a_malicious_replay(tmp_path, short_run):
    run_dir = copy_run(short_run, tmp_path)
    final, marker = run_dir / "checkpoints" / "final", tmp_path / "pwned"
    torch.save([{"replay": Payload(marker)}], final / "replicas.pt")
    rewrite_manifest(final)
    result = run_cli(["evaluate", str(run_dir), "--episodes", "10", "--checkpoint", "latest"])
    assert result.returncode == 0, result.stderr
    assert_user_error(run_cli(["train", "--resume", str(run_dir)]), "replicas.pt", "refused")
    assert not marker.exists(), "the checkpoint's payload ran"


def test_a_checkpoint_holds_only_tensors_arrays_and_plain_values(tmp_path):
    with pytest.raises(TypeError, match=r"replay\.rng"):
        save_checkpoint(tmp_path, "x", {"replay": {"rng": np.random.default_rng(0)}}, "", {})
    with pytest.raises(TypeError, match="dtype object"):
        save_checkpoint(tmp_path, "x", {"replay": {"obs": np.array([None])}}, "", {})
    assert not any(tmp_path.iterdir())   # refused before anything is written
    import random
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "bits": np.random.default_rng(3).bit_generator.state, "scalar": np.float32(1.5), "set": {1, 2}}
    save_checkpoint(tmp_path, "ok", {"rng": state}, "seed: 0\n", {"env_steps": 7})
    loaded = open_checkpoint(tmp_path).load("rng")
    assert loaded["python"] == random.getstate() and loaded["scalar"] == 1.5 and loaded["set"] == {1, 2}
    np.testing.assert_array_equal(loaded["numpy"][1], np.random.get_state()[1])


# ---- SIGTERM and SIGINT: a final checkpoint and summary, then exit 143 / 130 ----

def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distdqn.cli", "train", *args], cwd=REPO, env=ray_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(proc: subprocess.Popen, run_dir: Path, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").is_file() and read_metrics(run_dir):
            return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the run wrote no metrics row: {proc.communicate()[1][-2000:]}")


@pytest.mark.parametrize(("signum", "reason", "code"), [(signal.SIGTERM, "terminated", 143),
                                                         (signal.SIGINT, "interrupted", 130)])
def test_a_signal_ends_a_run_at_a_safe_point_with_a_final_checkpoint(tmp_path, signum, reason, code):
    run_dir = tmp_path / "run"
    proc = _start(["--run-dir", str(run_dir), *SHORT_RUN, "--set", "train.total_env_steps=100000000"])
    _wait_for_rows(proc, run_dir)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == reason and summary["final_checkpoint"]
    assert summary["non_finite_updates"] == summary["non_finite_steps"] == 0
    ckpt = open_checkpoint(run_dir)
    assert ckpt.path.name == "final" and ckpt.env_steps == summary["env_steps"] > 0
    assert not (run_dir / "distdqn.lock").exists()
    resumed = run_cli(["train", "--resume", str(run_dir), "--set", f"train.total_env_steps={summary['env_steps'] + 2000}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] >= summary["env_steps"] + 2000


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cartpole-apex", "cartpole-sync_ps", "cartpole-async_ps",
                                    "cartpole-allreduce", "cartpole-federated"])
def test_sigterm_ends_every_distributed_topology_cleanly(tmp_path, ray_cluster, preset):
    shm_before = set(os.listdir("/dev/shm"))
    run_dir = tmp_path / "run"
    proc = _start([preset, "--run-dir", str(run_dir), "--address", ray_cluster, "--set", "log.progress=false",
                   "--set", "log.interval_env_steps=500", "--set", "train.total_env_steps=100000000"])
    _wait_for_rows(proc, run_dir, timeout_s=180)
    processes = json.loads((run_dir / "processes.json").read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "terminated" and summary["final_checkpoint"], summary
    assert open_checkpoint(run_dir).path.name == "final"
    pids = {p["pid"] for p in processes.values() if p}
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.5)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "a role outlived its run"
    left = {n for n in set(os.listdir("/dev/shm")) - shm_before if n.startswith("distdqn-")}
    assert not left, left


def test_periodic_checkpoints_are_on_by_default_by_wall_clock(tmp_path):
    from distdqn.config import Config
    assert Config().checkpoint.interval_s == 300.0
    run_dir = tmp_path / "run"
    result = run_cli(["train", "--run-dir", str(run_dir), *SHORT_RUN, "--set", "train.total_env_steps=8000",
                      "--set", "checkpoint.interval_s=0.5"])
    assert result.returncode == 0, result.stderr
    assert list((run_dir / "checkpoints").glob("step-*"))


# ---- durable checkpoints: the newest that verifies; failed saves in one line ----

def _run_with_step_checkpoints(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    result = run_cli(["train", "--run-dir", str(run_dir), *SHORT_RUN, "--set", "checkpoint.interval_env_steps=1000"])
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty", "missing"])
def test_a_damaged_newest_checkpoint_is_passed_over_for_the_newest_that_verifies(tmp_path, damage):
    run_dir = _run_with_step_checkpoints(tmp_path)
    final = run_dir / "checkpoints" / "final"
    target = final / "replicas.pt"
    data = target.read_bytes()
    if damage == "flipped":
        target.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        target.unlink()
    newest_step = max(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    ckpt = open_checkpoint(run_dir)
    assert ckpt.path.name == newest_step and "replicas.pt" in ckpt.skipped[0]
    result = run_cli(["train", "--resume", str(run_dir), "--set", "train.total_env_steps=4000"])
    assert result.returncode == 0, result.stderr
    assert "passed over" in result.stderr and newest_step in result.stderr


def test_latest_naming_nothing_falls_back_and_nothing_verifying_is_one_line(tmp_path):
    run_dir = _run_with_step_checkpoints(tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / "final")   # a crash between two renames, say
    assert open_checkpoint(run_dir).path.name.startswith("step-")
    for p in (run_dir / "checkpoints").glob("step-*"):
        (p / "learner.pt").write_bytes(b"garbage")
    assert_user_error(run_cli(["evaluate", str(run_dir), "--checkpoint", "latest"]), "no checkpoint verifies", "learner.pt")


def test_a_checkpoint_replacing_one_of_its_name_is_swapped_in_whole(tmp_path):
    save_checkpoint(tmp_path, "final", {"counters": {"n": 1}}, "a: 1\n", {"env_steps": 1})
    save_checkpoint(tmp_path, "final", {"counters": {"n": 2}}, "a: 2\n", {"env_steps": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", LATEST]
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.load("counters") == {"n": 2} and ckpt.config_yaml == "a: 2\n"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (needs root; skipped elsewhere), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=False,
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_save_that_fills_the_disk_is_one_line_and_leaves_the_previous_checkpoint(tiny_disk):
    save_checkpoint(tiny_disk, "step-1", {"replay": {"obs": np.zeros(1000)}}, "a: 1\n", {"env_steps": 1})
    with pytest.raises(CheckpointWriteError, match="disk full") as raised:
        save_checkpoint(tiny_disk, "step-2", {"replay": {"obs": np.zeros(200_000)}}, "a: 2\n", {"env_steps": 2})
    assert "\n" not in str(raised.value) and "previous checkpoint is intact" in str(raised.value)
    assert sorted(p.name for p in tiny_disk.iterdir()) == [LATEST, "step-1"]
    assert open_checkpoint(tiny_disk).path.name == "step-1"


def test_temporaries_of_a_writer_that_died_are_swept_when_a_run_resumes(tmp_path, short_run):
    run_dir = copy_run(short_run, tmp_path)
    checkpoints = run_dir / "checkpoints"
    (checkpoints / f"{TMP_PREFIX}step-000000009999-4242").mkdir()
    (checkpoints / f"{TMP_PREFIX}step-000000009999-4242" / "learner.pt").write_bytes(b"half")
    (checkpoints / f".{LATEST}.tmp-4242").write_text("step-000000009999")
    assert sweep_temporaries(tmp_path / "nowhere") == []
    result = run_cli(["train", "--resume", str(run_dir), "--set", "train.total_env_steps=4000"])
    assert result.returncode == 0, result.stderr
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]


# ---- NaN and infinity, caught where they enter ----

HUGE_FORCE = ["--set", "env.attributes={force_mag: 1.0e+308}"]   # CartPole's state overflows to inf


def test_a_non_finite_observation_ends_the_run_in_one_line_naming_the_env(tmp_path):
    result = run_cli(["train", "--run-dir", str(tmp_path / "run"), *SHORT_RUN, *HUGE_FORCE])
    assert_user_error(result, "CartPole-v1", "non-finite observation", "env.non_finite")


def test_skipped_non_finite_steps_leave_no_transition_and_are_counted():
    from distdqn.config import load_config
    from distdqn.envs import env_info
    from distdqn.local.build import build_actor, build_learner
    cfg = load_config(None, ["env.attributes={force_mag: 1.0e+308}", "env.non_finite=skip"])
    info = env_info(cfg.env)
    actor = build_actor(cfg, info, build_learner(cfg, info).get_weights(), seed=0)
    rollout = actor.collect(20, 1.0)
    assert actor.non_finite_skipped > 0
    for name, column in rollout.transitions.as_dict().items():
        assert np.isfinite(column.astype(np.float64)).all(), name
    assert np.isfinite(rollout.episode_returns).all()


def test_a_non_finite_priority_leaves_the_sum_tree_finite():
    from distdqn.core.replay import PrioritizedReplay
    from distdqn.core.transitions import Transitions
    replay = PrioritizedReplay(64, (4,), np.float32, seed=0)
    n = 32
    replay.add(Transitions(np.zeros((n, 4), np.float32), np.zeros(n, np.int64), np.zeros(n, np.float32),
                           np.zeros((n, 4), np.float32), np.zeros(n, bool), np.ones(n, np.float32)),
               np.where(np.arange(n) == 3, np.nan, 1.0))
    replay.update_priorities(np.arange(8), np.array([np.nan, np.inf, 1, 2, 3, 4, 5, 6]))
    assert np.isfinite(replay._sums.root) and replay._sums.root > 0
    indices, weights = replay._draw(4, 8, 0.4)
    assert np.isfinite(weights).all() and (indices < n).all()


def _batch(reward: float):
    from distdqn.core.transitions import Batch
    n = 16
    return Batch(np.ones((n, 4), np.float32), np.zeros(n, np.int64), np.full(n, reward, np.float32),
                 np.ones((n, 4), np.float32), np.zeros(n, bool), np.full(n, 0.99, np.float32),
                 np.arange(n), np.ones(n, np.float32))


def test_the_learner_skips_non_finite_updates_and_ends_after_too_many_in_a_row():
    from distdqn.config import load_config
    from distdqn.envs import env_info
    from distdqn.local.build import build_learner
    cfg = load_config(None, ["learner.max_non_finite_updates=3"])
    learner = build_learner(cfg, env_info(cfg.env))
    learner.step(_batch(1.0))
    before = learner.state_dict()
    for _ in range(2):
        result = learner.step(_batch(np.nan))
        assert result.metrics == {"non_finite_update_share": 1.0}
    assert learner.updates == 1 and learner.non_finite.total == 2
    for name, tensor in before["online"].items():
        assert torch.equal(tensor, learner.state_dict()["online"][name]), name
    learner.step(_batch(1.0))   # a finite update in between: the streak starts again
    learner.step(_batch(np.inf))
    learner.step(_batch(np.nan))
    with pytest.raises(NonFiniteError, match="learner.max_non_finite_updates=3"):
        learner.step(_batch(np.nan))


def _poisoned_ps_run(run_dir: Path, ray_cluster: str, poisoned: str, *args: str) -> subprocess.CompletedProcess:
    """A parameter-server run whose workers ``poisoned`` push NaN (tests/poisoned_ps_driver.py)."""
    return subprocess.run([sys.executable, "-m", "tests.poisoned_ps_driver", poisoned, "train",
                           "--run-dir", str(run_dir), "--address", ray_cluster, "--set", "log.progress=false", *args], cwd=REPO,
                          env=ray_env(), capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["gradient", "parameter"])
def test_an_async_server_never_applies_a_worker_s_nan_update(tmp_path, ray_cluster, mode):
    run_dir = tmp_path / "run"
    result = _poisoned_ps_run(run_dir, ray_cluster, "1", "cartpole-async_ps", "--set", f"async_ps.mode={mode}",
                              "--set", "train.total_env_steps=6000", "--set", "eval.interval_env_steps=3000")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["non_finite_updates"] > 0 and summary["learner_updates"] > 0, summary
    online = open_checkpoint(run_dir).load("learner")["online"]
    assert all(torch.isfinite(v).all() for v in online.values()), "a NaN update was applied"


@pytest.mark.slow
def test_a_sync_server_refusing_every_round_ends_the_run_in_one_line(tmp_path, ray_cluster):
    """One worker of two pushes NaN: every round's mean is NaN, none is applied, and after
    learner.max_non_finite_updates rounds in a row the run ends in one line."""
    result = _poisoned_ps_run(tmp_path / "run", ray_cluster, "0", "cartpole-sync_ps",
                              "--set", "learner.max_non_finite_updates=5", "--set", "train.total_env_steps=100000")
    assert_user_error(result, "the parameter server", "5 updates in a row", "learner.max_non_finite_updates=5")


def test_a_replay_bigger_than_the_machine_is_refused_before_anything_starts(tmp_path):
    from distdqn.config import load_config
    from distdqn.envs import env_info
    from distdqn.errors import ConfigError
    from distdqn.local.build import check_replay_memory
    cfg = load_config(None, ["replay.capacity=100000000", "topology=allreduce"])
    with pytest.raises(ConfigError, match=r"replay.capacity: .* x 2 workers, more than this machine's 1.0 GiB"):
        check_replay_memory(cfg, env_info(cfg.env), memory_bytes=2**30)
    run_dir = tmp_path / "run"
    result = run_cli(["train", "--run-dir", str(run_dir), "--set", "replay.capacity=1000000000",
                      "--set", "replay.prioritized=true"])   # about 65 GiB
    assert_user_error(result, "replay.capacity", "memory")
    assert not run_dir.exists()


# ---- one writer per run directory ----

def test_a_second_writer_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(["--run-dir", str(run_dir), *SHORT_RUN, "--set", "train.total_env_steps=100000000"])
    try:
        _wait_for_rows(proc, run_dir)
        rows = len(read_metrics(run_dir))
        error = assert_user_error(run_cli(["train", "--resume", str(run_dir)]), "in use", f"pid {proc.pid}")
        assert str(run_dir) in error
        assert_user_error(run_cli(["train", "--run-dir", str(run_dir), "--overwrite", *SHORT_RUN]), "in use")
        assert len(read_metrics(run_dir)) >= rows   # nothing deleted or truncated
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 143


def test_a_lock_left_by_a_writer_that_died_is_taken_over(tmp_path, short_run):
    run_dir = copy_run(short_run, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)
    (run_dir / "distdqn.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                                      "started": "earlier"}))
    result = run_cli(["train", "--resume", str(run_dir), "--set", "train.total_env_steps=4000"])
    assert result.returncode == 0, result.stderr
    assert not (run_dir / "distdqn.lock").exists()


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, short_run):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "config.yaml").write_text("seed: 0\n")
    assert_user_error(run_cli(["train", "--run-dir", str(mine), "--overwrite", *SHORT_RUN]),
                      "not a distdqn run", "thesis.tex")
    assert (mine / "thesis.tex").read_text() == "years of work"
    run_dir = copy_run(short_run, tmp_path)
    result = run_cli(["train", "--run-dir", str(run_dir), "--overwrite", *SHORT_RUN, "--seed", "4"])
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "summary.json").read_text())["seed"] == 4


# ---- honest history on resume ----

def test_a_resumed_run_drops_the_history_past_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_dir = _run_with_step_checkpoints(tmp_path)
    checkpoints = run_dir / "checkpoints"
    for newest in ["final", max(p.name for p in checkpoints.glob("step-*"))]:   # as if killed
        shutil.rmtree(checkpoints / newest)                                     # after the one left
    start = open_checkpoint(run_dir).env_steps
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"env_steps": 99999, "wall_s": 1')   # torn by the kill
    assert max(r["env_steps"] for r in read_metrics(run_dir)) > start   # rows past the checkpoint
    result = run_cli(["train", "--resume", str(run_dir), "--set", "train.total_env_steps=5000"])
    assert result.returncode == 0, result.stderr
    steps = [r["env_steps"] for r in read_metrics(run_dir)]
    assert steps == sorted(steps) and len(set(steps[:-1])) == len(steps) - 1, steps   # (the last:
    assert 99999 not in steps                                                        # the final evaluation's)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("learner_updates")] == steps


def test_readers_skip_a_torn_last_line(tmp_path, short_run):
    run_dir = copy_run(short_run, tmp_path)
    rows = read_metrics(run_dir)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"env_steps": 4000, "wall')
    assert read_metrics(run_dir) == rows
    result = run_cli(["plot", str(run_dir), "-o", str(tmp_path / "p.png")])
    assert result.returncode == 0, result.stderr


# ---- a checkpoint that does not fit the run is one line ----

def test_a_checkpoint_of_other_spaces_or_shapes_is_one_line(tmp_path, short_run):
    run_dir = copy_run(short_run, tmp_path)
    final = run_dir / "checkpoints" / "final"
    manifest = json.loads((final / "manifest.json").read_text())
    (final / "manifest.json").write_text(json.dumps({**manifest, "env": {**manifest["env"], "num_actions": 3}}))
    assert_user_error(run_cli(["evaluate", str(run_dir), "--checkpoint", "latest"]), "num_actions 3")
    (final / "manifest.json").write_text(json.dumps(manifest))

    learner = open_checkpoint(final).load("learner")
    learner["online"] = {k: torch.zeros(7, *v.shape[1:]) for k, v in learner["online"].items()}
    torch.save(learner, final / "learner.pt")
    rewrite_manifest(final)
    assert_user_error(run_cli(["train", "--resume", str(run_dir)]), "does not fit this run")
    assert_user_error(run_cli(["evaluate", str(run_dir), "--checkpoint", "latest"]), "weights do not match")

