"""federated: FedAvg learns across CartPole variants through the CLI; what a client sends is its
update, a sample count and scalars, nothing else; dropped, stalled and poisoned clients; resume."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from distdqn.config import load_config
from distdqn.envs import env_info
from distdqn.metrics import read_metrics
from distdqn.runtime.messages import ClientMessage, check_message
from tests.helpers import (
    REPO,
    freeze_role_mid_run,
    kill_role_mid_run,
    metrics_started,
    ray_env,
    run_cli,
)

PRESET = "cartpole-federated"
QUIET = ["--set", "log.progress=false"]


def train(run_dir, ray_cluster, *args, timeout=900):
    result = run_cli(["train", PRESET, *args, "--run-dir", str(run_dir), "--address", ray_cluster, *QUIET],
                     timeout=timeout, env=ray_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def final_online(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "final" / "learner.pt", weights_only=False)["online"]


# ---- the message a client sends ----

SHAPES = {"hidden.0.weight": (8, 4), "hidden.0.bias": (8,)}


def good_message():
    return ClientMessage(update={k: np.zeros(s, np.float32) for k, s in SHAPES.items()}, base_version=0, num_samples=10,
                         env_steps=64, local_updates=4, episodes=2, episode_return_mean=20.0,
                         episode_length_mean=20.0, metrics={"loss": 0.5, "q_mean": 1.0})


def _with_transitions(m):
    """A message of a subclass that smuggles transitions in a field of its own."""
    from dataclasses import asdict, dataclass, field

    @dataclass
    class Smuggler(ClientMessage):
        transitions: np.ndarray = field(default_factory=lambda: np.zeros((10, 4)))
    return Smuggler(**asdict(m))


@pytest.mark.parametrize("spoil,why", [
    (lambda m: vars(m), "type"),                                            # a plain dict
    (_with_transitions, "type"),
    (lambda m: setattr(m, "transitions", np.zeros((10, 4))) or m, "fields"),
    (lambda m: m.metrics.update(episode_returns=np.ones(3)) or m, "scalars"),
    (lambda m: m.update.update({"hidden.0.bias": np.zeros(9, np.float32)}) or m, "shape"),
    (lambda m: m.update.update(obs=np.zeros(4)) or m, "parameters"),
    (lambda m: setattr(m, "num_samples", 1.5) or m, "num_samples"),
    (lambda m: setattr(m, "base_version", -1) or m, "base_version"),
    (lambda m: setattr(m, "episodes", np.int64(3)) or m, "episodes"),
    (lambda m: setattr(m, "episode_return_mean", np.ones(3)) or m, "episode means"),
])
def test_check_message_accepts_only_update_count_and_scalars(spoil, why):
    assert check_message(good_message(), SHAPES) is None
    bad = spoil(good_message())
    problem = check_message(bad, SHAPES)
    assert problem is not None and why in problem, problem


def test_a_real_client_sends_only_its_update_a_count_and_scalars():
    """A FederatedClient on Ray, two rounds: each message passes check_message, and its pickled
    size is the update's bytes plus a little (no transitions could hide in it)."""
    import ray

    from distdqn.core import aggregate
    from distdqn.local import build
    from distdqn.runtime.cluster import connect
    from distdqn.runtime.roles.federated_client import FederatedClient
    from distdqn.runtime.weights import PushedWeights

    cfg = load_config(PRESET, ["train.learning_starts=200", "federated.dp.mode=local", "federated.dp.clip=0.05",
                               "federated.dp.noise_multiplier=0.0"])
    info = env_info(cfg.env)
    cluster = connect(None, num_cpus=1)
    try:
        learner, pushed = build.build_learner(cfg, info), PushedWeights()
        client = FederatedClient.options(num_cpus=0.5).remote(cfg.for_client(1), info, 1, 4, 7, 0.5)
        shapes = {k: v.shape for k, v in learner.get_weights().items()}
        for _ in range(2):
            message = ray.get(client.train_round.remote(pushed.weights_for(1, learner), 20), timeout=120)
            assert check_message(message, shapes) is None, check_message(message, shapes)
            update_bytes = sum(v.nbytes for v in message.update.values())
            assert len(pickle.dumps(message)) < update_bytes + 2048
            assert message.local_updates == 20 and message.env_steps > 0
            assert message.num_samples >= 200
            # local DP clipping: the update's L2 norm is at most dp.clip
            norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in message.update.values()))
            assert 0 < norm <= 0.05 * (1 + 1e-5) and message.metrics["update_norm"] >= norm
            learner.set_weights(aggregate.add_scaled(learner.get_weights(), message.update, 1.0))
            learner.advance(20)
    finally:
        cluster.shutdown()


# ---- learning and robustness through the CLI ----

@pytest.mark.slow
def test_federated_solves_cartpole_across_client_variants(tmp_path, ray_cluster):
    run_dir = tmp_path / "run"
    summary = train(run_dir, ray_cluster, "--seed", "0", "--set", "eval.stop_when_solved=true",
                    "--set", "train.total_env_steps=150000")
    assert summary["solved"], summary
    assert summary["topology"] == "federated" and summary["num_workers"] == 4
    assert max(r["eval_return_mean"] for r in read_metrics(run_dir) if r.get("eval_return_mean")) >= 475
    # the global model was evaluated on every client's variant too
    assert len(summary["client_eval_returns"]) == 4
    assert any(all(f"eval_return_client{i}" in row for i in range(4)) for row in read_metrics(run_dir))
    # the server's checkpoint holds the global model only: no client state, no replay
    manifest = json.loads((run_dir / "checkpoints" / "final" / "manifest.json").read_text())
    assert not {"workers", "replicas", "replay"} & set(manifest["components"]), manifest["components"]


@pytest.mark.slow
@pytest.mark.parametrize("aggregator", ["median", "fedavg"])
def test_a_poisoned_client_stops_fedavg_but_not_the_median(tmp_path, ray_cluster, aggregator):
    """Client 2 is an attacker (tests/poisoned_federated_driver.py: a test's, not a config field):
    the median leaves its NaN and 1e6 values out and learns; the mean takes them in, so every
    round's aggregate holds a NaN, which the server never applies: after
    learner.max_non_finite_updates rounds in a row the run ends in one line."""
    run_dir = tmp_path / aggregator
    result = subprocess.run([sys.executable, "-m", "tests.poisoned_federated_driver", "2", "train", PRESET,
                             "--seed", "1", "--run-dir", str(run_dir), "--address", ray_cluster, *QUIET,
                             "--set", "train.total_env_steps=24000", "--set", f"federated.aggregator={aggregator}",
                             "--set", "learner.max_non_finite_updates=5"], cwd=REPO, env=ray_env(),
                            capture_output=True, text=True, timeout=900, check=False)
    if aggregator == "median":
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert all(torch.isfinite(v).all() for v in final_online(run_dir).values())
        assert summary["final_eval_return_mean"] >= 150, summary
        assert summary["non_finite_updates"] == 0
    else:   # the same garbage through plain FedAvg: the test can fail
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
        assert "the round's aggregate: 5 updates in a row" in lines[0], lines


@pytest.mark.slow
def test_a_dropped_client_is_skipped_and_the_run_goes_on(tmp_path, ray_cluster):
    run_dir = tmp_path / "run"
    args = [PRESET, "--seed", "2", "--run-dir", str(run_dir), "--address", ray_cluster, *QUIET,
            "--set", "train.total_env_steps=16000"]
    returncode, err, _ = kill_role_mid_run(args, "worker1", metrics_started(run_dir), wait_s=120, finish_s=600)
    assert returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped"] >= 1 and summary["worker_restarts"] >= 1
    assert summary["env_steps"] >= 16000 and summary["rounds_abandoned"] == 0


@pytest.mark.slow
def test_too_few_answers_abandon_the_round_and_say_so(tmp_path, ray_cluster):
    """min_clients 4 of 4, one client frozen for 6 s: its rounds are abandoned, with a note, and
    the run carries on once it is back."""
    run_dir = tmp_path / "run"
    args = [PRESET, "--seed", "3", "--run-dir", str(run_dir), "--address", ray_cluster, *QUIET,
            "--set", "train.total_env_steps=10000", "--set", "federated.min_clients=4",
            "--set", "federated.round_timeout_s=1.0"]

    returncode, err, _ = freeze_role_mid_run(args, "worker0", metrics_started(run_dir), 6.0,
                                             wait_s=120, finish_s=600)
    assert returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_abandoned"] >= 1 and summary["skipped"] >= 1
    assert any("fewer than federated.min_clients=4" in note for note in summary["notes"])
    assert "fewer than federated.min_clients=4" in err


def test_late_updates_join_the_next_aggregate_discounted_by_their_staleness():
    """stale_weighted: a fresh update weighs n_k, one 3 rounds behind n_k / sqrt(4) (exponent 0.5)."""
    from distdqn.topologies.federated import _aggregate

    def message(value, num_samples, base_version):
        m = good_message()
        m.update, m.num_samples, m.base_version = {"w": np.array([value], np.float32)}, num_samples, base_version
        return m
    cfg = load_config(PRESET, ["federated.late_updates=stale_weighted", "federated.local_steps=10"])
    fresh, stale = message(1.0, 100, 40), message(5.0, 100, 10)   # version 40: the stale one is 3 rounds behind
    delta = _aggregate(cfg, 40, [fresh], [stale], 4, np.random.default_rng(0))
    np.testing.assert_allclose(delta["w"], [(100 * 1.0 + 50 * 5.0) / 150], rtol=1e-6)
    # without late ones, plain FedAvg over the fresh
    np.testing.assert_allclose(_aggregate(cfg, 40, [fresh], [], 4, np.random.default_rng(0))["w"], [1.0])


@pytest.mark.slow
@pytest.mark.parametrize("late_updates", ["stale_weighted", "drop"])
def test_a_late_clients_update_is_used_or_dropped_and_counted(tmp_path, ray_cluster, late_updates):
    """Client 0 frozen for 3 s with a 1 s round deadline: it misses a round; its update arrives
    late and is folded into a later aggregate (stale_weighted) or dropped, and counted either way."""
    run_dir = tmp_path / "run"
    args = [PRESET, "--seed", "3", "--run-dir", str(run_dir), "--address", ray_cluster, *QUIET,
            "--set", "train.total_env_steps=30000", "--set", "federated.round_timeout_s=1.0",
            "--set", f"federated.late_updates={late_updates}"]   # the run outlasts the freeze

    returncode, err, _ = freeze_role_mid_run(args, "worker0", metrics_started(run_dir), 3.0,
                                             wait_s=120, finish_s=600)
    assert returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped"] >= 1 and summary["late_updates"] == late_updates
    used, dropped = summary["late_used"], summary["late_dropped"]
    facts = {k: summary[k] for k in ("skipped", "late_used", "late_dropped", "worker_restarts", "rounds", "wall_s")}
    assert (used >= 1 and dropped == 0) if late_updates == "stale_weighted" else (used == 0 and dropped >= 1), facts
    counted = "late_used" if late_updates == "stale_weighted" else "late_dropped"
    assert max(r.get(counted, 0) for r in read_metrics(run_dir)) >= 1   # in the metrics rows too


@pytest.mark.slow
def test_central_dp_reports_the_accountants_epsilon(tmp_path, ray_cluster):
    """dp.mode central: epsilon in every row (growing with rounds), in the summary and on the
    CLI's last line, equal to dp-accounting's for the rounds the run made."""
    from dp_accounting import dp_event, rdp

    from distdqn.core.privacy import RDP_ORDERS
    run_dir = tmp_path / "run"
    result = run_cli(["train", PRESET, "--seed", "0", "--run-dir", str(run_dir), "--address", ray_cluster, *QUIET,
                      "--set", "train.total_env_steps=4000", "--set", "log.interval_env_steps=1000",
                      "--set", "federated.dp.mode=central", "--set", "federated.dp.clip=1.0",
                      "--set", "federated.dp.noise_multiplier=1.5", "--set", "federated.clients_per_round=0.5"],
                     timeout=600, env=ray_env())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    accountant = rdp.RdpAccountant(list(RDP_ORDERS))
    accountant.compose(dp_event.PoissonSampledDpEvent(0.5, dp_event.GaussianDpEvent(1.5)), summary["dp_rounds"])
    assert summary["dp_epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert summary["dp_mode"] == "central" and summary["dp_delta"] == 1e-5
    epsilons = [r["dp_epsilon"] for r in read_metrics(run_dir) if "dp_epsilon" in r]
    assert len(epsilons) >= 2 and epsilons == sorted(epsilons) and epsilons[-1] <= summary["dp_epsilon"]
    assert f"DP (central): epsilon {summary['dp_epsilon']:.2f}, delta 1e-05" in result.stdout.splitlines()[-1]


@pytest.mark.slow
def test_federated_resume_continues_the_global_model(tmp_path, ray_cluster):
    run_dir = tmp_path / "run"
    before = train(run_dir, ray_cluster, "--seed", "4", "--set", "train.total_env_steps=4000")
    resumed = run_cli(["train", "--resume", str(run_dir), "--address", ray_cluster,
                       "--set", "train.total_env_steps=8000"], timeout=600, env=ray_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["env_steps"] >= 8000
    assert after["rounds"] > before["rounds"] and after["learner_updates"] > before["learner_updates"]
