"""sync_ps, async_ps and allreduce through the CLI on the session's real Ray cluster: they learn,
sync_ps with one worker is single update for update, all-reduce replicas stay identical, a killed
async worker is restarted, a stalled sync worker does not stall the run, a dead rank ends an
all-reduce run cleanly, and resume continues from the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from distdqn.metrics import read_metrics
from tests.helpers import act_on_role_mid_run, kill_role_mid_run, metrics_started, ray_env, run_cli

QUIET = ["--set", "log.progress=false"]


def train(run_dir, ray_cluster, *args, timeout=900):
    result = run_cli(["train", *args, "--run-dir", str(run_dir), "--address", ray_cluster, *QUIET],
                     timeout=timeout, env=ray_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "final" / "learner.pt", weights_only=False)["online"]


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["sync_ps", "async_ps", "allreduce"])
def test_topology_solves_cartpole(tmp_path, ray_cluster, topology):
    run_dir = tmp_path / "run"
    summary = train(run_dir, ray_cluster, f"cartpole-{topology}", "--seed", "0",
                    # ends at the first solving evaluation; the budget only bounds a slow seed
                    "--set", "eval.stop_when_solved=true", "--set", "train.total_env_steps=120000")
    assert summary["solved"], summary
    assert summary["topology"] == topology and summary["num_workers"] == 2
    solving = [r for r in read_metrics(run_dir) if r.get("eval_return_mean") is not None]
    assert max(r["eval_return_mean"] for r in solving) >= 475
    if topology == "allreduce":
        assert summary["replicas_identical"] and len(set(summary["replica_hashes"])) == 1
    else:   # workers on the driver's node: the shared-memory transport
        assert summary["transport"] == "shm"
    if topology == "async_ps":
        assert sum(summary["staleness_histogram"].values()) > 0
        # ... and as TensorBoard histograms, one per metrics row
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"histograms": 0})
        events.Reload()
        assert "staleness" in events.Tags()["histograms"]
        assert sum(h.histogram_value.num for h in events.Histograms("staleness")) > 0


def test_sync_ps_with_one_worker_is_single_update_for_update(tmp_path, ray_cluster):
    """Gradient averaging over one worker: the same batches, the same gradients, the same Adam steps
    as single, so the same parameters after every one of the K updates (checked at the end)."""
    budget = ["--seed", "5", "--set", "train.total_env_steps=2500", "--set", "train.torch_threads=1",
              "--set", "eval.interval_env_steps=100000", "--set", "replay.prioritized=true"]
    single_dir, sync_dir = tmp_path / "single", tmp_path / "sync"
    single = run_cli(["train", *budget, "--run-dir", str(single_dir), *QUIET])
    assert single.returncode == 0, single.stderr[-3000:]
    single_summary = json.loads((single_dir / "summary.json").read_text())
    sync_summary = train(sync_dir, ray_cluster, *budget, "--set", "topology=sync_ps",
                         "--set", "workers.num_workers=1", "--set", "sync_ps.mode=gradient")
    assert sync_summary["learner_updates"] == single_summary["learner_updates"] > 500
    assert sync_summary["env_steps"] == single_summary["env_steps"]
    a, b = final_weights(single_dir), final_weights(sync_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("topology", ["sync_ps", "async_ps"])
@pytest.mark.parametrize("transport", ["shm", "tcp", "ray"])
def test_parameter_servers_over_shared_memory_and_ray_calls(tmp_path, ray_cluster, topology, transport):
    """Every way a server and its workers exchange (their own loops over shared memory or a
    socket; a Ray call per update) learns; the loops report the roles' busy and wait times and
    leave no segment."""
    run_dir = tmp_path / "run"
    summary = train(run_dir, ray_cluster, f"cartpole-{topology}", "--seed", "1",
                    "--set", "train.total_env_steps=4000", "--set", f"{topology}.transport={transport}",
                    "--set", "log.interval_env_steps=1000")
    assert summary["transport"] == transport and summary["env_steps"] >= 4000
    assert summary["learner_updates"] >= 250, summary
    rows = read_metrics(run_dir)
    assert any((r.get("loss") or 0) > 0 for r in rows)   # the workers' update metrics reach the rows
    if transport != "ray":
        busy = [r for r in rows if "worker_busy_s" in r]
        assert busy and busy[-1]["worker_busy_s"] > 0 and busy[-1]["server_wait_s"] >= 0
    assert not list(Path("/dev/shm").glob("distdqn-*"))


@pytest.mark.parametrize(("backend", "resolved"), [("gloo", "gloo"), ("auto", "shm")])
def test_allreduce_replicas_are_identical_after_k_updates(tmp_path, ray_cluster, backend, resolved):
    """Ranks on one node average through shared memory by default (auto), or with gloo."""
    summary = train(tmp_path / "run", ray_cluster, "cartpole-allreduce", "--seed", "1",
                    "--set", "train.total_env_steps=3000", "--set", "allreduce.updates_per_call=16",
                    "--set", f"allreduce.backend={backend}")
    assert summary["learner_updates"] >= 300
    assert len(summary["replica_hashes"]) == 2 and summary["replicas_identical"]
    assert summary["backend"] == resolved
    # every rank collects before the same updates (reset steps make their env-step counts differ)
    assert summary["collections_in_step"] >= 0.9, summary["collections_in_step"]
    assert not list(Path("/dev/shm").glob("distdqn-*"))   # the shared segment is gone


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["shm", "tcp", "ray"])
def test_async_ps_restarts_a_killed_worker_and_finishes(tmp_path, ray_cluster, transport):
    run_dir = tmp_path / "run"
    args = ["cartpole-async_ps", "--seed", "2", "--run-dir", str(run_dir), "--address", ray_cluster,
            *QUIET, "--set", "train.total_env_steps=12000", "--set", f"async_ps.transport={transport}"]
    returncode, err, victim = kill_role_mid_run(args, "worker0", metrics_started(run_dir), wait_s=120, finish_s=600)
    assert returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["worker_restarts"] >= 1 and summary["env_steps"] >= 12000
    assert any("worker 0 died" in note for note in summary["notes"])
    assert json.loads((run_dir / "processes.json").read_text())["worker0"]["pid"] != victim


@pytest.mark.slow
def test_a_stalled_sync_worker_does_not_stall_the_run(tmp_path, ray_cluster):
    """worker1 is frozen (SIGSTOP) for 8 s: rounds go on without it after a 1 s deadline."""
    run_dir = tmp_path / "run"
    args = ["cartpole-sync_ps", "--seed", "3", "--run-dir", str(run_dir), "--address", ray_cluster,
            *QUIET, "--set", "train.total_env_steps=8000", "--set", "sync_ps.round_timeout_s=1.0",
            "--set", "log.interval_env_steps=500"]
    frozen: dict[str, float] = {}

    def freeze(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        frozen["at"] = time.time()
        rows_before = len(read_metrics(run_dir))
        time.sleep(8.0)
        frozen["rows_during"] = len(read_metrics(run_dir)) - rows_before
        os.kill(pid, signal.SIGCONT)

    returncode, err, _ = act_on_role_mid_run(args, "worker1", metrics_started(run_dir), freeze,
                                             wait_s=120, finish_s=600)
    assert returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["left_out"] >= 1 and summary["rounds_short"] >= 1
    assert frozen["rows_during"] >= 2, "the run made no progress while a worker was frozen"
    rows = read_metrics(run_dir)
    assert any(r.get("workers_per_round") == 1 for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["gloo", "shm"])
def test_a_dead_allreduce_rank_ends_the_run_clearly(tmp_path, ray_cluster, backend):
    run_dir = tmp_path / "run"
    args = ["cartpole-allreduce", "--seed", "4", "--run-dir", str(run_dir), "--address", ray_cluster,
            *QUIET, "--set", "train.total_env_steps=400000", "--set", "allreduce.collective_timeout_s=20",
            "--set", "checkpoint.interval_env_steps=2000", "--set", f"allreduce.backend={backend}"]
    start = time.time()
    returncode, err, _ = kill_role_mid_run(args, "worker1", lambda: (run_dir / "checkpoints" / "latest").is_file(),
                                           wait_s=120, finish_s=120)
    assert returncode == 2, err[-3000:]
    assert time.time() - start < 150
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "rank" in errors[0] and "Traceback" not in err, err[-2000:]
    assert not list(Path("/dev/shm").glob("distdqn-*"))   # the driver removed the dead rank's segment
    evaluated = run_cli(["evaluate", str(run_dir), "--episodes", "3"])
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("topology,mode", [("sync_ps", "model"), ("async_ps", "parameter")])
def test_the_model_averaging_forms_learn(tmp_path, ray_cluster, topology, mode):
    """sync_ps model averaging and async_ps parameter mixing: k local updates per message, counted
    as k learner updates; both get well past a random policy (about 22) in 12k env steps."""
    summary = train(tmp_path / "run", ray_cluster, f"cartpole-{topology}", "--seed", "7",
                    "--set", f"{topology}.mode={mode}", "--set", "train.total_env_steps=12000")
    assert summary["mode"] == mode and summary["learner_updates"] > 0
    if topology == "sync_ps":   # every round counts local_steps (8) updates, the last one maybe fewer
        assert summary["learner_updates"] <= 8 * summary["rounds"] < summary["learner_updates"] + 8
    else:   # an accepted model counts the local updates it holds: 8, fewer only once the budget
            # stops collection (no batch owed); so staleness comes in steps of 8 but for the last few
        histogram = {int(s): n for s, n in summary["staleness_histogram"].items() if not s.startswith(">")}
        in_steps_of_8 = sum(n for s, n in histogram.items() if s % 8 == 0)
        assert in_steps_of_8 >= 0.9 * sum(histogram.values()), histogram
    assert summary["final_eval_return_mean"] >= 60, summary


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["sync_ps", "async_ps", "allreduce"])
def test_resume_continues_from_the_checkpoint(tmp_path, ray_cluster, topology):
    run_dir = tmp_path / "run"
    before = train(run_dir, ray_cluster, f"cartpole-{topology}", "--seed", "6",
                   "--set", "train.total_env_steps=3000")
    resumed = run_cli(["train", "--resume", str(run_dir), "--address", ray_cluster,
                       "--set", "train.total_env_steps=6000"], timeout=600, env=ray_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["env_steps"] >= 6000
    assert after["learner_updates"] > before["learner_updates"] and after["episodes"] > before["episodes"]
    rows = read_metrics(run_dir)
    resumed_rows = [r for r in rows if r["env_steps"] > before["env_steps"]]
    assert resumed_rows and resumed_rows[0]["learner_updates"] > before["learner_updates"]
