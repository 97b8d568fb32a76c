"""The Python API: the README's example runs as written; configs from a preset, a YAML file, a dict
or a Config, with overrides (the cluster address one of them) applied before validation; the run
it returns; checkpoints/best beside latest, and which one each command takes."""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import distdqn
from distdqn.config import load_config
from distdqn.errors import CheckpointError, ConfigError
from distdqn.metrics import read_metrics
from tests.helpers import REPO, SHORT_RUN, run_cli
from tests.test_cli_errors import assert_user_error


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


@pytest.mark.slow
def test_the_readmes_python_example_runs_and_its_agent_balances(tmp_path):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", readme_python_example()], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    first, mean = result.stdout.strip().splitlines()
    run_dir, solved, best = first.split()
    assert solved == "True" and float(best) >= 475, first
    assert float(mean) >= 400, mean            # the best checkpoint, on 20 fresh episodes
    assert (tmp_path / run_dir / "checkpoints" / "best").is_dir() and (tmp_path / "cartpole.pt").is_file()


# ---- configs ----

def test_no_submodule_shadows_a_name_of_the_api():
    """Importing a submodule sets it as the package's attribute: one named like an API function
    (a module export.py) would replace distdqn.export by the module after its first use."""
    submodules = {m.name for m in pkgutil.iter_modules(distdqn.__path__)}
    assert not submodules & set(distdqn.__all__), submodules & set(distdqn.__all__)
    for module in sorted(submodules):
        importlib.import_module(f"distdqn.{module}")
    from distdqn import api
    assert all(getattr(distdqn, name) is getattr(api, name) for name in distdqn.__all__ if name != "__version__")


def test_a_config_from_a_preset_a_file_a_dict_or_a_config_object(tmp_path):
    overrides = {"learner.lr": 2e-4, "network.hidden_sizes": [32, 32]}
    from_preset = distdqn.make_config("acrobot", overrides=overrides, seed=4)
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(load_config("acrobot").to_dict()))
    from_file = distdqn.make_config(path, overrides=["learner.lr=2e-4", "network.hidden_sizes=[32, 32]"], seed=4)
    from_dict = distdqn.make_config(load_config("acrobot").to_dict(), overrides=overrides, seed=4)
    base = load_config("acrobot")
    from_object = distdqn.make_config(base, overrides=overrides, seed=4)
    assert from_preset == from_file == from_dict == from_object
    assert from_object.learner.lr == 2e-4 and from_object.seed == 4 and from_object.env.id == "Acrobot-v1"
    assert base == load_config("acrobot") and base.learner.lr != 2e-4   # the config handed in is left as it was
    assert distdqn.make_config("acrobot", env="CartPole-v1").env.id == "CartPole-v1"


def test_the_cluster_address_is_an_override_applied_before_validation():
    cfg = distdqn.make_config("cartpole-apex", address="127.0.0.1:1")
    assert cfg.cluster.address == "127.0.0.1:1"
    with pytest.raises(ConfigError, match="unknown key"):
        distdqn.make_config(None, overrides={"cluster.adress": "x"})
    with pytest.raises(ConfigError, match="train.total_env_steps"):
        distdqn.make_config(None, overrides={"train.total_env_steps": "many"})


def test_train_returns_the_run_directory_summary_and_metrics(tmp_path):
    run = distdqn.train(overrides=SHORT_RUN[1::2], run_dir=tmp_path / "run", verbose=False)
    assert run.dir == tmp_path / "run"
    assert run.summary == json.loads((run.dir / "summary.json").read_text())
    assert run.metrics == read_metrics(run.dir) and run.metrics[-1]["env_steps"] == run.summary["env_steps"]
    assert run.config == load_config(None, [*SHORT_RUN[1::2], "network.kind=mlp"])   # auto resolved for the env
    q = run.load().q_values(np.zeros((3, 4), np.float32))
    assert q.shape == (3, 2) and np.isfinite(q).all()


# ---- checkpoints/best ----

def test_best_holds_the_best_evaluation_and_latest_stays_the_last(tmp_path, short_run):
    """short_run evaluates at 1500 and 3000 env steps (and at the end): best is the one with the
    highest mean, its network evaluates to that mean again with the run's own seed."""
    summary = json.loads((short_run / "summary.json").read_text())
    evals = [r for r in read_metrics(short_run) if r.get("eval_return_mean") is not None]
    best_row = max(evals, key=lambda r: r["eval_return_mean"])
    manifest = json.loads((short_run / "checkpoints" / "best" / "manifest.json").read_text())
    assert manifest["eval_return_mean"] == best_row["eval_return_mean"] == summary["best_eval_return_mean"]
    assert manifest["env_steps"] == summary["best_eval_env_steps"] == best_row["eval_env_steps"]
    assert (short_run / "checkpoints" / "latest").read_text().strip() == "final"
    best, latest = distdqn.load(short_run), distdqn.load(short_run, "latest")
    assert best.checkpoint.name == "best" and latest.checkpoint.name == "final"
    assert best.env_steps == manifest["env_steps"] and latest.env_steps == summary["env_steps"]


def test_evaluate_says_which_checkpoint_it_took(short_run):
    default = run_cli(["evaluate", str(short_run), "--episodes", "2"])
    assert default.returncode == 0 and "(checkpoint best," in default.stdout, default.stdout + default.stderr
    latest = run_cli(["evaluate", str(short_run), "--episodes", "2", "--checkpoint", "latest"])
    assert latest.returncode == 0 and "(checkpoint final," in latest.stdout, latest.stdout + latest.stderr


def _resign(ckpt: Path) -> None:
    """Recompute the manifest's sizes and checksums, as whoever crafted a shared checkpoint would."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (ckpt / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_load_reads_the_network_alone_never_the_replay_or_the_envs(tmp_path, short_run):
    """An agent is its network: load and evaluate read the checkpoint's learner (or best's policy)
    and nothing else, so a checkpoint whose other components carry a payload (its manifest
    re-signed, as a crafted one would be) still loads, and the payload never runs."""
    run_dir, marker = tmp_path / "run", tmp_path / "payload-ran"
    shutil.copytree(short_run, run_dir)
    final = run_dir / "checkpoints" / "final"
    others = [p for p in final.glob("*.pt") if p.stem != "learner"]
    assert others, sorted(p.name for p in final.iterdir())
    for path in others:
        with path.open("wb") as f:
            pickle.dump(_Payload(marker), f)
    _resign(final)
    agent = distdqn.load(run_dir, "latest")
    assert agent.checkpoint == final and agent.act(np.zeros(4, dtype=np.float32)) in (0, 1)
    evaluated = run_cli(["evaluate", str(run_dir), "--episodes", "2", "--checkpoint", "latest"])
    assert evaluated.returncode == 0 and "(checkpoint final," in evaluated.stdout, evaluated.stderr[-2000:]
    assert not marker.exists()
    (final / "learner.pt").write_bytes(b"not a pickle")
    _resign(final)
    assert_user_error(run_cli(["evaluate", str(run_dir), "--checkpoint", "latest"]), "learner.pt", "none of it was run")


def test_best_is_no_point_to_resume_from_and_a_missing_best_is_one_line(tmp_path, short_run):
    best = short_run / "checkpoints" / "best"
    assert_user_error(run_cli(["train", "--resume", str(best)]), "best", "resume from the run directory")
    run_dir = tmp_path / "run"
    shutil.copytree(short_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "best")
    assert distdqn.load(run_dir).checkpoint.name == "final"    # no best: latest, as the help says
    assert_user_error(run_cli(["evaluate", str(run_dir), "--checkpoint", "best"]), "no checkpoint 'best'", "latest")
    with pytest.raises(CheckpointError, match="no checkpoint 'step-1'"):
        distdqn.load(run_dir, "step-1")


def test_a_resumed_run_keeps_the_best_it_had(tmp_path, short_run):
    run_dir = tmp_path / "run"
    shutil.copytree(short_run, run_dir)
    before = json.loads((run_dir / "checkpoints" / "best" / "manifest.json").read_text())
    result = run_cli(["train", "--resume", str(run_dir), "--set", "train.total_env_steps=4500"])
    assert result.returncode == 0, result.stderr[-2000:]
    after = json.loads((run_dir / "checkpoints" / "best" / "manifest.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert after["eval_return_mean"] >= before["eval_return_mean"]
    assert summary["best_eval_return_mean"] == after["eval_return_mean"]
    evals = [r["eval_return_mean"] for r in read_metrics(run_dir) if r.get("eval_return_mean") is not None]
    assert after["eval_return_mean"] == max(evals)


def test_keep_best_off_writes_no_best(tmp_path):
    run = distdqn.train(overrides=[*SHORT_RUN[1::2], "checkpoint.keep_best=false"], run_dir=tmp_path / "run",
                        verbose=False)
    assert not (run.dir / "checkpoints" / "best").exists() and run.summary["best_eval_return_mean"] is None


# ---- learning Discrete observations to their optimal returns ----

@pytest.mark.slow
@pytest.mark.parametrize(("preset", "optimum"), [("frozenlake", 1.0), ("cliffwalking", -13.0)])
def test_one_hot_observations_reach_the_optimal_return(tmp_path, preset, optimum):
    run_dir = tmp_path / "run"
    result = run_cli(["train", preset, "--seed", "0", "--run-dir", str(run_dir), "--set", "log.progress=false",
                      "--set", "eval.stop_when_solved=true"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["solved"] and summary["best_eval_return_mean"] == optimum, summary
    evaluated = run_cli(["evaluate", str(run_dir), "--episodes", "10"])
    assert evaluated.returncode == 0 and f"mean {optimum:.2f} std 0.00" in evaluated.stdout, evaluated.stdout
