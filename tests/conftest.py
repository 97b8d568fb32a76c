from __future__ import annotations

import pytest

from tests.helpers import SHORT_RUN, run_cli


@pytest.fixture(scope="session")
def short_run(tmp_path_factory):
    """One real, short `distdqn train` run (CartPole-v1), shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("short") / "run"
    result = run_cli(["train", "--run-dir", str(run_dir), "--seed", "3", *SHORT_RUN])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir
