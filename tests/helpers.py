"""Shared helpers for tests that drive the real `distdqn` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A run that finishes in a few seconds: enough to write metrics, evaluations and checkpoints.
SHORT_RUN = [
    "--set", "train.total_env_steps=3000", "--set", "train.learning_starts=500",
    "--set", "eval.interval_env_steps=1500", "--set", "log.interval_env_steps=1000",
    "--set", "log.progress=false", "--set", "train.torch_threads=1",
]


def run_cli(args: list[str], cwd: Path | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(env or os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "distdqn.cli", *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
