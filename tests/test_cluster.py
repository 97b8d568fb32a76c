"""Distributed topologies on a real two-node Ray cluster started on this machine (loopback), joined
with --address; clusters that cannot be reached or are too small; a local instance that listens
on loopback only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from distdqn.metrics import read_metrics
from tests.helpers import REPO, free_port, metrics_started, ray_env, ray_start, run_cli


@pytest.fixture(scope="session")
def two_node_cluster(ray_cluster):
    """A second node (its own raylet) joined to the session's cluster on this machine."""
    worker = ray_start(f"--address={ray_cluster}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                       '--resources={"second_node": 4}', "--disable-usage-stats")
    assert worker.returncode == 0, worker.stderr[-2000:]
    return ray_cluster


@pytest.mark.slow
def test_apex_runs_actors_on_both_nodes(two_node_cluster, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "cartpole-apex", "--address", two_node_cluster,
                      "--run-dir", str(run_dir), "--set", "apex.num_actors=2", "--set", "apex.actor_cpus=1",
                      "--set", "train.total_env_steps=6000", "--set", "log.progress=false"], timeout=600,
                     env=ray_env())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cluster_nodes"] == 2
    assert len(summary["actor_nodes"]) == 2, summary["actor_nodes"]
    assert summary["env_steps"] >= 6000 and summary["learner_updates"] > 0


@pytest.mark.slow
def test_federated_clients_run_on_both_nodes(two_node_cluster, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "cartpole-federated", "--address", two_node_cluster,
                      "--run-dir", str(run_dir), "--set", "workers.cpus=1", "--set", "train.total_env_steps=6000",
                      "--set", "log.progress=false"], timeout=600, env=ray_env())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cluster_nodes"] == 2 and summary["rounds"] > 0
    nodes = {w["node_id"] for w in json.loads((run_dir / "processes.json").read_text()).values()}
    assert len(nodes) == 2, nodes


@pytest.mark.slow
def test_workers_run_where_their_resources_are(two_node_cluster, tmp_path):
    """workers.resources places the workers (here on the second node, which alone offers
    second_node); the server stays in the driver, on the head."""
    run_dir = tmp_path / "run"
    result = run_cli(["train", "cartpole-async_ps", "--address", two_node_cluster, "--run-dir", str(run_dir),
                      "--set", "workers.resources={second_node: 1}", "--set", "train.total_env_steps=3000",
                      "--set", "log.progress=false"], timeout=600, env=ray_env())
    assert result.returncode == 0, result.stderr[-3000:]
    processes = json.loads((run_dir / "processes.json").read_text())
    worker_nodes = {p["node_id"] for name, p in processes.items() if name.startswith("worker")}
    assert len(worker_nodes) == 1 and processes["driver"]["node_id"] not in worker_nodes, processes


def test_resources_no_node_offers_are_a_one_line_error(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "cartpole-sync_ps", "--address", ray_cluster, "--run-dir", str(run_dir),
                      "--set", "workers.resources={gpu_box: 1}"], timeout=300, env=ray_env())
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "workers.resources" in errors[0] and "gpu_box" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not run_dir.exists()


@pytest.mark.parametrize("topology", ["sync_ps", "allreduce", "federated"])
def test_a_cluster_too_small_for_the_workers_is_a_one_line_error(ray_cluster, tmp_path, topology):
    run_dir = tmp_path / "run"
    result = run_cli(["train", f"cartpole-{topology}", "--address", ray_cluster,
                      "--run-dir", str(run_dir), "--set", "workers.num_workers=40", "--set", "workers.cpus=1",
                      "--set", "federated.clients=[]"], timeout=300, env=ray_env())
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "needs 40 CPUs" in errors[0], result.stderr[-2000:]
    assert not run_dir.exists()


def test_unreachable_address_is_a_one_line_error(tmp_path):
    port = free_port()  # nothing listens there
    run_dir = tmp_path / "run"
    result = run_cli(["train", "--set", "topology=apex", "--address", f"127.0.0.1:{port}",
                      "--run-dir", str(run_dir)], timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "cannot reach" in errors[0]
    assert not run_dir.exists()


def test_a_cluster_too_small_for_the_run_is_a_one_line_error(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "cartpole-apex", "--address", ray_cluster, "--run-dir", str(run_dir),
                      "--set", "apex.num_actors=50", "--set", "apex.actor_cpus=1"], timeout=300, env=ray_env())
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "needs 51 CPUs" in errors[0], result.stderr[-2000:]
    assert not run_dir.exists()


def listening_sockets(pids: set[int]) -> list[str]:
    """The local addresses that processes ``pids`` listen on (TCP) or are bound to (UDP), from `ss`."""
    out = subprocess.run(["ss", "-H", "-ltunp"], capture_output=True, text=True, check=True).stdout
    return [line.split()[4] for line in out.splitlines()
            if any(f"pid={pid}," in line for pid in pids)]


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    seen, todo = set(), [pid]
    while todo:
        p = todo.pop()
        seen.add(p)
        todo += children.get(p, [])
    return seen


def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]").removeprefix("::ffff:")
    return host == "::1" or host.startswith("127.")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (iproute2) to list sockets")
@pytest.mark.parametrize(("args", "min_sockets"), [
    (["cartpole-apex"], 4),                                                           # GCS, raylet, driver, workers
    (["cartpole-allreduce", "--set", "allreduce.backend=gloo"], 4),                   # + the ranks' store and gloo
    (["cartpole", "--set", "learner.model_parallel=2", "--set", "train.torch_threads=1"], 1),   # no Ray: the store
], ids=["apex", "allreduce-gloo", "single-model-parallel"])
def test_a_local_run_listens_on_loopback_only_and_keeps_rays_notice_in_its_log(tmp_path, args, min_sockets):
    """The embedded instance (no --address), and the rendezvous of torch.distributed groups on one
    host: while a run trains, every socket its process tree (driver, GCS, raylet, workers, the
    learner's ranks) listens on is a loopback one; Ray's token-authentication notice is in
    run.log, once, and not on the terminal."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    proc = subprocess.Popen([sys.executable, "-m", "distdqn.cli", "train", *args, "--run-dir",
                             str(run_dir), "--set", "train.total_env_steps=8000", "--set", "log.progress=false",
                             "--set", "log.interval_env_steps=1000"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = metrics_started(run_dir) if args[0] != "cartpole" else (   # single writes no processes.json
            lambda: (run_dir / "metrics.jsonl").is_file() and bool(read_metrics(run_dir)))
        deadline = time.time() + 120
        while time.time() < deadline and not ready() and proc.poll() is None:
            time.sleep(0.5)
        assert ready(), "the run never started training"
        sockets = listening_sockets(descendants(proc.pid))
        proc.send_signal(signal.SIGTERM)   # seen what it listens on: the run need not go on
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]   # stopped by SIGTERM at its next safe point
    assert len(sockets) >= min_sockets, sockets   # the scan sees them
    assert all(is_loopback(s) for s in sockets), sockets
    assert "Token authentication" not in err, err[-2000:]
    if args[0] != "cartpole":   # a run that started Ray
        log = (run_dir / "run.log").read_text()
        assert log.count("Token authentication is enabled") == 1, log
