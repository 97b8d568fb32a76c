"""apex on a real local Ray instance, through the CLI: it learns, survives an actor's death, resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from distdqn.metrics import read_metrics
from tests.helpers import REPO, run_cli

APEX_FAST = ["--set", "topology=apex", "--set", "log.progress=false", "--set", "apex.num_actors=2",
             "--set", "apex.actor_cpus=0.5", "--set", "apex.learner_cpus=1"]


@pytest.mark.slow
def test_apex_solves_cartpole(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "configs/cartpole-apex.yaml", "--seed", "0", "--run-dir", str(run_dir),
                      "--set", "log.progress=false"], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["solved"], summary
    assert summary["final_eval_return_mean"] >= 475 or any(
        r.get("eval_return_mean", 0) >= 475 for r in read_metrics(run_dir))
    rows = read_metrics(run_dir)
    assert any(r.get("replay_size") for r in rows)
    assert all("weight_lag_updates" in r for r in rows[:-1])


@pytest.mark.slow
def test_apex_survives_a_killed_actor(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "distdqn.cli", "train", "configs/cartpole-apex.yaml", "--seed", "1",
           "--run-dir", str(run_dir), "--set", "log.progress=false", "--set", "apex.num_actors=2",
           "--set", "apex.actor_cpus=0.5"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        victim = None
        while time.time() < deadline and victim is None:
            processes = run_dir / "processes.json"
            if processes.is_file() and (run_dir / "metrics.jsonl").is_file() and read_metrics(run_dir):
                victim = json.loads(processes.read_text())["actor0"]["pid"]
            time.sleep(0.5)
        assert victim is not None, "the run never reported its processes"
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["actor_restarts"] >= 1
    assert any("actor 0 died" in note for note in summary["notes"])
    assert summary["solved"], summary
    assert json.loads((run_dir / "processes.json").read_text())["actor0"]["pid"] != victim
