"""apex on a real two-node Ray cluster started on this machine (loopback), joined with --address."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli

RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _cluster_env() -> dict[str, str]:
    """Token authentication on every node and the driver, as Ray (>= 2.59) expects of a cluster."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token"
    return env


@pytest.fixture
def two_node_cluster(tmp_path):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = _cluster_env()
    token = _ray("get-auth-token", "--generate", env=env)
    assert token.returncode == 0, token.stderr[-2000:]
    head = _ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                "--include-dashboard=false", "--disable-usage-stats", env=env)
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        worker = _ray("start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                      "--disable-usage-stats", env=env)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield address
    finally:
        _ray("stop", "--force", env=env)


@pytest.mark.slow
def test_apex_runs_actors_on_both_nodes(two_node_cluster, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "configs/cartpole-apex.yaml", "--address", two_node_cluster,
                      "--run-dir", str(run_dir), "--set", "apex.num_actors=2", "--set", "apex.actor_cpus=1",
                      "--set", "train.total_env_steps=6000", "--set", "log.progress=false"], timeout=600,
                     env=_cluster_env())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cluster_nodes"] == 2
    assert len(summary["actor_nodes"]) == 2, summary["actor_nodes"]
    assert summary["env_steps"] >= 6000 and summary["learner_updates"] > 0


def test_unreachable_address_is_a_one_line_error(tmp_path):
    port = _free_port()  # nothing listens there
    run_dir = tmp_path / "run"
    result = run_cli(["train", "--set", "topology=apex", "--address", f"127.0.0.1:{port}",
                      "--run-dir", str(run_dir)], timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "cannot reach" in errors[0]
    assert not run_dir.exists()
