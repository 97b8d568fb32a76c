"""learner.model_parallel: a learner split over ranks (tensor-parallel) against the unsplit one.

P=2 runs as rank 0 in this process and rank 1 in a local process (local/model_parallel.py), as in
``single``; the same batches must give the same parameters, target and Adam moments as P=1 (to
float tolerance: the sums are split differently), checkpoints move between P=1 and P=2, and a rank
that dies or stalls ends the learner's next call with one error within the collective timeout.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import torch

from distdqn.config import config_from_dict
from distdqn.core.tensor_parallel import ShardLayout
from distdqn.core.transitions import Batch
from distdqn.envs import EnvInfo
from distdqn.local import build
from distdqn.local.model_parallel import ModelParallelError, split_locally
from tests.helpers import kill_role_mid_run, metrics_started, ray_env, run_cli

torch.set_num_threads(1)


def make_cfg(hidden=(64, 64), **learner):
    base = {"lr": 3e-3, "target_update_period": 10, "model_parallel": 2, "model_parallel_timeout_s": 20.0}
    base.update(learner)
    network = {"hidden_sizes": list(hidden), "dueling": base.pop("dueling", False),
               "kind": base.pop("kind", "mlp")}
    return config_from_dict({"learner": base, "network": network})


MLP_INFO = EnvInfo("test", (6,), np.dtype(np.float32), 3, None)
CNN_INFO = EnvInfo("test-pixels", (2, 36, 36), np.dtype(np.uint8), 4, None)


def random_batch(rng: np.random.Generator, info: EnvInfo, size: int = 32) -> Batch:
    def obs():
        if info.obs_dtype == np.uint8:
            return rng.integers(0, 256, (size, *info.obs_shape), dtype=np.uint8)
        return rng.normal(size=(size, *info.obs_shape)).astype(np.float32)
    return Batch(obs=obs(), action=rng.integers(0, info.num_actions, size).astype(np.int64),
                 reward=rng.normal(size=size).astype(np.float32), next_obs=obs(),
                 terminated=rng.random(size) < 0.2, discount=np.full(size, 0.97, np.float32),
                 indices=np.arange(size, dtype=np.int64),
                 weights=rng.uniform(0.2, 1.0, size).astype(np.float32))


def unsplit(cfg, info, seed=0):
    torch.manual_seed(seed)
    return build.build_learner(cfg.model_copy(update={"learner": cfg.learner.model_copy(
        update={"model_parallel": 1})}), info)


def assert_states_close(a: dict, b: dict, atol: float) -> None:
    for part in ("online", "target"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            torch.testing.assert_close(torch.as_tensor(a[part][k]), torch.as_tensor(b[part][k]),
                                       atol=atol, rtol=0.0, msg=f"{part}.{k}")
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(a["optimizer"][key][0], b["optimizer"][key][0], atol=atol, rtol=1e-4, msg=key)
    assert float(a["optimizer"]["steps"][0]) == float(b["optimizer"]["steps"][0])
    assert (a["updates"], a["target_version"]) == (b["updates"], b["target_version"])


def test_layout_cuts_and_joins_flat_buffers():
    shapes = {"a.weight": torch.Size([4, 3]), "a.bias": torch.Size([4]), "b.weight": torch.Size([2, 4]),
              "b.bias": torch.Size([2])}
    layout = ShardLayout(shapes, {"a.weight": 0, "a.bias": 0, "b.weight": 1, "b.bias": None}, 2)
    full = torch.arange(sum(s.numel() for s in shapes.values()), dtype=torch.float32)
    parts = [layout.local_flat(full, r) for r in range(2)]
    assert parts[0].numel() == parts[1].numel() == 6 + 2 + 4 + 2
    torch.testing.assert_close(layout.full_flat(parts), full)
    # rank 1 holds rows 2..3 of a.weight and columns 2..3 of b.weight
    local = layout.unflatten(parts[1], full=False)
    torch.testing.assert_close(local["a.weight"], full[:12].view(4, 3)[2:])
    torch.testing.assert_close(local["b.weight"], full[16:24].view(2, 4)[:, 2:])
    with pytest.raises(ValueError, match="do not split evenly"):
        ShardLayout({"w": torch.Size([3, 2])}, {"w": 0}, 2)


@pytest.mark.parametrize("case", [
    {"hidden": (64, 64)},                                              # one pair, the head whole
    {"hidden": (32,), "dueling": True, "target_update": "soft"},       # the dueling head closes the pair
    {"hidden": (32, 32, 32), "loss": "mse", "double_dqn": False, "max_grad_norm": 0.5},  # two pairs, clipping
    {"hidden": (32,), "kind": "nature_cnn", "atol": 1e-4},             # the torso replicated, its gradient summed
])
def test_two_ranks_match_one_over_100_updates(case):
    case = dict(case)
    atol = case.pop("atol", 2e-5)   # Adam normalises each coordinate: rounding in near-zero gradients shows
    info = CNN_INFO if case.get("kind") == "nature_cnn" else MLP_INFO
    cfg = make_cfg(**case)
    one = unsplit(cfg, info)
    two = split_locally(unsplit(cfg, info), cfg, info, threads=1)
    try:
        assert_states_close(one.state_dict(), two.state_dict(), atol=0.0)   # the same start
        rng = np.random.default_rng(1)
        for _ in range(100):
            batch = random_batch(rng, info)
            r1, r2 = one.step(batch), two.step(batch)
            np.testing.assert_allclose(r1.priorities, r2.priorities, atol=1e-4, rtol=1e-4)
            assert r1.metrics["grad_norm"] == pytest.approx(r2.metrics["grad_norm"], rel=1e-4, abs=1e-6)
        assert two.updates == 100 and two.target_version == one.target_version
        assert_states_close(one.state_dict(), two.state_dict(), atol=atol)
        weights = two.get_weights()
        assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in one.get_weights().items()}
    finally:
        two.close()


def test_checkpoints_move_between_one_and_two_ranks():
    cfg = make_cfg(hidden=(64, 64))
    rng = np.random.default_rng(2)
    batches = [random_batch(rng, MLP_INFO) for _ in range(60)]
    two = split_locally(unsplit(cfg, MLP_INFO), cfg, MLP_INFO, threads=1)
    try:
        for batch in batches[:20]:
            two.step(batch)
        saved_at_two = two.state_dict()
        one = unsplit(cfg, MLP_INFO, seed=5)        # other initial weights: all must come from the checkpoint
        one.load_state_dict(saved_at_two)
        for batch in batches[20:40]:                # both go on from the P=2 checkpoint
            one.step(batch), two.step(batch)
        assert_states_close(one.state_dict(), two.state_dict(), atol=2e-5)
        saved_at_one = one.state_dict()
        two.load_state_dict(saved_at_one)           # and P=2 goes on from a P=1 checkpoint
        assert_states_close(two.state_dict(), saved_at_one, atol=0.0)
        for batch in batches[40:]:
            one.step(batch), two.step(batch)
        assert_states_close(one.state_dict(), two.state_dict(), atol=2e-5)
        two.set_weights(saved_at_one["online"], saved_at_one["target"])
        for k, v in two.get_target_weights().items():
            np.testing.assert_array_equal(v, saved_at_one["target"][k].numpy())
    finally:
        two.close()


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_lost_rank_ends_the_learner_in_one_line(how):
    cfg = make_cfg(hidden=(64, 64), model_parallel_timeout_s=5.0)
    two = split_locally(unsplit(cfg, MLP_INFO), cfg, MLP_INFO, threads=1)
    rank1 = two.local_processes[0]
    rng = np.random.default_rng(3)
    try:
        two.step(random_batch(rng, MLP_INFO))
        os.kill(rank1.pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        start = time.perf_counter()
        with pytest.raises(ModelParallelError) as err:
            for _ in range(1000):
                two.step(random_batch(rng, MLP_INFO))
        assert time.perf_counter() - start < 5.0 + 10.0
        message = str(err.value)
        assert "\n" not in message and message.startswith("learner.model_parallel: a rank of 2 died or stalled")
    finally:
        if how == "stopped":
            os.kill(rank1.pid, signal.SIGKILL)
        two.close()


def test_data_parallel_topologies_refuse_it_in_one_line():
    result = run_cli(["train", "cartpole-allreduce", "--set", "learner.model_parallel=2"])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [(
        "error: learner.model_parallel: allreduce does not split its learners across ranks (only single and "
        "apex do); use 1")]


@pytest.mark.slow
def test_single_with_two_ranks_learns_cartpole(tmp_path):
    """`distdqn train cartpole --set learner.model_parallel=2`: the learner on two processes reaches
    CartPole-v0's bar (a 10-episode greedy mean >= 195) within 15000 env steps (seed 0 does at
    about 6000; the unsplit learner at a similar count)."""
    run_dir = tmp_path / "run"
    result = run_cli(["train", "cartpole", "--seed", "0", "--run-dir", str(run_dir),
                      "--set", "learner.model_parallel=2", "--set", "train.total_env_steps=15000",
                      "--set", "eval.solve_threshold=195", "--set", "eval.stop_when_solved=true",
                      "--set", "log.progress=false"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["solved"], summary
    # the checkpoint is the unsplit learner's: it loads where the learner is not split
    result = run_cli(["evaluate", str(run_dir / "checkpoints" / "final"), "--episodes", "10"], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_apex_with_two_learner_ranks_trains_and_a_dead_rank_ends_it_in_one_line(tmp_path, ray_cluster):
    """apex with ``learner.model_parallel=2``: rank 1 is an actor on the learner's node; the run
    trains and saves an unsplit checkpoint; killing rank 1 mid-run ends a second run in one line."""
    run_dir = tmp_path / "run"
    result = run_cli(["train", "cartpole-apex", "--seed", "0", "--run-dir", str(run_dir), "--address", ray_cluster,
                      "--set", "learner.model_parallel=2", "--set", "train.total_env_steps=4000",
                      "--set", "log.progress=false"], timeout=600, env=ray_env())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["learner_updates"] > 0
    processes = json.loads((run_dir / "processes.json").read_text())
    assert processes["learner rank 1"]["node_id"] == processes["learner"]["node_id"]
    assert processes["learner rank 1"]["pid"] != processes["learner"]["pid"]
    assert run_cli(["evaluate", str(run_dir), "--episodes", "10"]).returncode == 0

    run_dir = tmp_path / "killed"
    args = ["cartpole-apex", "--seed", "1", "--run-dir", str(run_dir), "--address", ray_cluster,
            "--set", "learner.model_parallel=2", "--set", "learner.model_parallel_timeout_s=20",
            "--set", "log.progress=false", "--set", "train.total_env_steps=200000"]
    returncode, err, _ = kill_role_mid_run(args, "learner rank 1", metrics_started(run_dir), wait_s=180, finish_s=120)
    assert returncode == 2 and "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "checkpoint is intact" in errors[0], err[-2000:]
