"""An agent's Q-network as one file that runs without distdqn: TorchScript or ONNX.

The exported model maps a batch of observations as distdqn stores them ([B, *obs_shape], the
dtype of the run's replay) to action values [B, num_actions] (float32), the same values as the
network (tests/test_export.py: within 1e-5). What "as distdqn stores them" means for the run's
env travels in the file, as JSON (``distdqn.json``: TorchScript's extra files; ONNX's metadata
``distdqn``): the shape and dtype, the transform from the env's observation (``none``;
``channels_first``: [H, W, C] -> [C, H, W]; ``channel_axis``: [H, W] -> [1, H, W]; ``flatten``: the
values at ``paths`` of a Dict or Tuple concatenated, Discrete ones as their index) and the first
action's number (``action_start``).

    q = torch.jit.load("agent.pt")(torch.as_tensor(obs)[None])
    q = onnxruntime.InferenceSession("agent.onnx").run(None, {"obs": obs[None]})[0]

ONNX needs the onnx extra (``pip install 'distdqn[onnx]'``: onnx and onnxscript for torch's
exporter, onnxruntime to run it).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdqn import __version__
from distdqn.agent import Agent
from distdqn.errors import UserError

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}


def description(agent: Agent) -> dict[str, Any]:
    """What a user of the file needs to feed it (the JSON that travels in it)."""
    layout = agent.layout
    return {
        "distdqn_version": __version__, "env_id": agent.config.env.id, "checkpoint": agent.checkpoint.name,
        "env_steps": agent.env_steps, "obs_shape": list(agent.info.obs_shape),
        "obs_dtype": str(np.dtype(agent.info.obs_dtype)), "num_actions": agent.info.num_actions,
        "action_start": agent.action_start, "observation_transform": layout.transform,
        "observation_paths": [list(p) for p in layout.paths],
        "input": "obs [B, *obs_shape]", "output": "q_values [B, num_actions] float32",
    }


def example_input(agent: Agent, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A batch of observations of the run's env, as stored (drawn from the stored space)."""
    from distdqn.envs import observation_layout
    space = observation_layout(agent.observation_space).space
    space.seed(seed)
    return torch.as_tensor(np.stack([space.sample() for _ in range(batch)]))


def export(agent: Agent, path: str | Path, fmt: str = "onnx") -> Path:
    """Write the agent's Q-network to ``path`` in ``fmt`` (torchscript or onnx); returns the path."""
    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    path = Path(path)
    network = agent.network.eval().cpu()
    example = example_input(agent)
    meta = json.dumps(description(agent))
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")   # TorchScript is in maintenance; trace still runs it whole
            traced = torch.jit.trace(network, example, check_trace=False)
        _prepare(path)
        torch.jit.save(traced, str(path), _extra_files={"distdqn.json": meta})
        return path
    try:
        import onnx
    except ImportError:
        raise UserError("--format onnx: needs the onnx extra (pip install 'distdqn[onnx]')") from None
    _prepare(path)
    exporter_log = logging.getLogger("torch.onnx")   # notes about operators the network does not use
    level, exporter_log.level = exporter_log.level, logging.ERROR
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (example,), str(path), input_names=["obs"], output_names=["q_values"],
                              dynamic_shapes={"obs": {0: torch.export.Dim("batch")}}, dynamo=True,
                              verbose=False)
    finally:
        exporter_log.setLevel(level)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "distdqn", meta
    onnx.save(model, str(path))
    return path


def _prepare(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"--output: {path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
