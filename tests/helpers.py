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
                          capture_output=True, text=True, timeout=timeout, check=False)


def ray_env() -> dict[str, str]:
    """Environment for Ray CLI commands and drivers joining a test cluster: token authentication
    on every node and the driver, as Ray (>= 2.59) expects of a cluster it did not start itself."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token"
    return env


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    ray = str(Path(sys.executable).with_name("ray"))
    return subprocess.run([ray, *args], env=ray_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


_STARTED_NODES: list[int] = []   # process groups of the `ray start` commands this session ran


def ray_start(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`ray start ARGS` in a process group of its own, remembered so that ``stop_ray_nodes`` ends
    exactly the nodes this test session started (never `ray stop`, which ends every Ray process
    on the machine, another test session's included)."""
    ray = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.Popen([ray, "start", *args], env=ray_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _STARTED_NODES.append(proc.pid)   # the node's daemons keep the group of `ray start`
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop_ray_nodes() -> None:
    """End the nodes ``ray_start`` started (their workers exit with their raylet)."""
    import signal
    import time
    for signum, pause in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        for group in _STARTED_NODES:
            try:
                os.killpg(group, signum)
            except ProcessLookupError:
                pass
        time.sleep(pause)
    _STARTED_NODES.clear()


def start_ray_head(num_cpus: int) -> str:
    """Start a Ray head on loopback (generating the auth token if needed); returns its address."""
    token = ray_cli("get-auth-token", "--generate")
    assert token.returncode == 0, token.stderr[-2000:]
    port = free_port()
    head = ray_start("--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                     f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats")
    assert head.returncode == 0, head.stderr[-2000:]
    return f"127.0.0.1:{port}"


def act_on_role_mid_run(args: list[str], role: str, ready, act, wait_s: float, finish_s: float):
    """Start `distdqn train ARGS`, wait until ``ready()`` holds, call ``act(pid)`` on the process
    playing ``role`` (from processes.json), and let the run finish. Returns (returncode, stderr, pid)."""
    import json
    import time
    cmd = [sys.executable, "-m", "distdqn.cli", "train", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ray_env())
    try:
        deadline = time.time() + wait_s
        while time.time() < deadline and not ready():
            time.sleep(0.5)
        assert ready(), f"the run never got ready to act on its {role}"
        victim = json.loads((Path(args[args.index("--run-dir") + 1]) / "processes.json").read_text())[role]["pid"]
        act(victim)
        _, err = proc.communicate(timeout=finish_s)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err, victim


def kill_role_mid_run(args: list[str], role: str, ready, wait_s: float, finish_s: float):
    """As act_on_role_mid_run, killing the process with SIGKILL."""
    import signal
    return act_on_role_mid_run(args, role, ready, lambda pid: os.kill(pid, signal.SIGKILL), wait_s, finish_s)


def freeze_role_mid_run(args: list[str], role: str, ready, seconds: float, wait_s: float, finish_s: float):
    """As act_on_role_mid_run, freezing the process (SIGSTOP) for ``seconds``, then letting it go on."""
    import signal
    import time

    def freeze(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(pid, signal.SIGCONT)
    return act_on_role_mid_run(args, role, ready, freeze, wait_s, finish_s)


def metrics_started(run_dir: Path):
    """A ready() for the helpers above: processes.json and at least one metrics row exist."""
    def ready() -> bool:
        from distdqn.metrics import read_metrics
        return ((run_dir / "processes.json").is_file() and (run_dir / "metrics.jsonl").is_file()
                and bool(read_metrics(run_dir)))
    return ready
