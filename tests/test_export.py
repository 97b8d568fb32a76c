"""`distdqn export RUN --format torchscript|onnx`: a file that computes the network's Q-values
without distdqn (checked within 1e-5: TorchScript by torch.jit, ONNX by onnxruntime), for an MLP,
a one-hot encoded MLP and the MinAtar CNN, with the description of its input inside."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import distdqn
from distdqn.exporter import example_input
from tests.helpers import run_cli
from tests.test_cli_errors import assert_user_error

TINY = ["train.total_env_steps=300", "train.learning_starts=64", "learner.batch_size=16", "eval.interval_env_steps=150",
        "log.progress=false", "train.torch_threads=1", "env.num_envs=2", "replay.capacity=1000"]
RUNS = {
    "mlp": ["env.id=CartPole-v1", "network.dueling=true"],
    "one_hot": ["env.id=FrozenLake-v1", "env.kwargs={is_slippery: false}"],
    "minatar_cnn": ["env.id=MinAtar/Breakout-v1", "network.hidden_sizes=[32]", "network.atoms=5"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, overrides in RUNS.items():
        if name == "minatar_cnn":
            pytest.importorskip("minatar")
        out[name] = distdqn.train(overrides=[*TINY, *overrides], run_dir=tmp_path_factory.mktemp(name) / "run",
                                  verbose=False).dir
    return out


def network_q(agent, obs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return agent.network(obs).numpy()


def without_distdqn(code: str) -> subprocess.CompletedProcess:
    """Python with distdqn made unimportable: only torch / onnxruntime and the file."""
    guard = "import sys; sys.modules['distdqn'] = None\n"
    return subprocess.run([sys.executable, "-c", guard + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_torchscript_computes_the_networks_q_values_without_distdqn(tmp_path, runs, name):
    agent = distdqn.load(runs[name])
    path = distdqn.export(agent, tmp_path / "agent.pt", format="torchscript")
    obs = example_input(agent, batch=7, seed=3)
    np.save(tmp_path / "obs.npy", obs.numpy())
    result = without_distdqn(f"""
        import json, numpy as np, torch
        files = {{"distdqn.json": ""}}
        model = torch.jit.load({str(path)!r}, _extra_files=files)
        np.save({str(tmp_path / 'q.npy')!r}, model(torch.from_numpy(np.load({str(tmp_path / 'obs.npy')!r}))).detach().numpy())
        meta = files["distdqn.json"]   # bytes (torch 2.13), str before
        print(meta.decode() if isinstance(meta, bytes) else meta)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), network_q(agent, obs), atol=1e-5, rtol=0)
    meta = json.loads(result.stdout)
    assert meta["obs_shape"] == list(agent.info.obs_shape) and meta["num_actions"] == agent.info.num_actions


@pytest.mark.parametrize("name", sorted(RUNS))
def test_onnx_computes_the_networks_q_values_in_onnxruntime(tmp_path, runs, name):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    agent = distdqn.load(runs[name])
    result = run_cli(["export", str(runs[name]), "--format", "onnx", "-o", str(tmp_path / "agent.onnx")])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "checkpoint best" in result.stdout
    obs = example_input(agent, batch=5, seed=4)
    np.save(tmp_path / "obs.npy", obs.numpy())
    run = without_distdqn(f"""
        import json, numpy as np, onnxruntime
        session = onnxruntime.InferenceSession({str(tmp_path / 'agent.onnx')!r})
        np.save({str(tmp_path / 'q.npy')!r}, session.run(None, {{"obs": np.load({str(tmp_path / 'obs.npy')!r})}})[0])
        print(session.get_modelmeta().custom_metadata_map["distdqn"])
    """)
    assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), network_q(agent, obs), atol=1e-5, rtol=0)
    assert json.loads(run.stdout)["obs_dtype"] == str(agent.info.obs_dtype)


def test_export_defaults_to_the_run_directory_and_refuses_an_unknown_format(runs, tmp_path):
    written = distdqn.export(runs["mlp"], format="torchscript")
    assert written == runs["mlp"] / "export" / "best.pt" and written.is_file()
    assert_user_error(run_cli(["export", str(runs["mlp"]), "--format", "tflite", "-o", str(tmp_path / "x")]),
                      "--format", "torchscript, onnx")
    assert not (tmp_path / "x").exists()
