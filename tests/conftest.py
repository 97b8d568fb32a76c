from __future__ import annotations

import os

import pytest
from hypothesis import settings

# CI runs the property tests on a fixed set of examples, so that a submission's result does not
# depend on the random search; locally they search afresh each run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from tests.helpers import SHORT_RUN, run_cli, start_ray_head, stop_ray_nodes


@pytest.fixture(scope="session")
def short_run(tmp_path_factory):
    """One real, short `distdqn train` run (CartPole-v1), shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("short") / "run"
    result = run_cli(["train", "--run-dir", str(run_dir), "--seed", "3", *SHORT_RUN])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray cluster (a head on loopback) shared by the distributed-topology tests of a session;
    runs join it with --address instead of each starting Ray. Yields (address, env for the CLI)."""
    address = start_ray_head(num_cpus=4)
    try:
        yield address
    finally:
        stop_ray_nodes()   # only this session's nodes: other sessions may be running beside it
