"""The presets travel with the package: each has a one-line description, `distdqn presets` lists
them, an unknown name is a one-line error, and a wheel built from the tree trains them by name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distdqn.config import load_config, preset_description, preset_names
from tests.helpers import REPO, run_cli
from tests.test_cli_errors import assert_user_error

PRESETS = REPO / "distdqn" / "presets"
NAMES = sorted(path.stem for path in PRESETS.glob("*.yaml"))
TINY_RUN = ["--set", "train.total_env_steps=1500", "--set", "train.learning_starts=500",
            "--set", "eval.interval_env_steps=1000", "--set", "log.progress=false",
            "--set", "train.torch_threads=1"]


def test_the_presets_are_the_files_in_the_package():
    assert NAMES, "no preset in distdqn/presets/"
    assert preset_names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_opens_with_a_one_line_description(name):
    first_line = (PRESETS / f"{name}.yaml").read_text().splitlines()[0]
    assert first_line.startswith("# "), f"{name}: line 1 should be a comment describing the preset"
    description = preset_description(name)
    assert description == first_line.removeprefix("# ").strip()
    assert 0 < len(description) <= 80, f"{name}: one short line, beside its name in `distdqn presets`"


def test_presets_command_lists_every_preset_with_its_description():
    result = run_cli(["presets"])
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    for line, name in zip(lines, NAMES):
        assert line.endswith(preset_description(name)), line


def test_an_unknown_name_is_one_line_naming_it_and_the_presets(tmp_path):
    run_dir = tmp_path / "run"
    error = assert_user_error(run_cli(["train", "lunarlandr", "--run-dir", str(run_dir)]),
                              "lunarlandr", "no such config file or preset")
    assert error.endswith(f"(presets: {', '.join(NAMES)})")
    assert not run_dir.exists()


# ---- the wheel: built from the tree, installed in a fresh venv, used from elsewhere ----

@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """A venv (seeing this interpreter's packages, for torch and the rest) with the wheel of this
    tree installed; returns its bin/ folder. Built from a copy of the sources, so that no build/
    left in the tree (or in another worktree) leaks into the wheel. Offline: no index, no build
    isolation. This interpreter may itself be a venv: ``--system-site-packages`` would see the base
    interpreter's packages, not the ones installed here, so the new venv adds this interpreter's
    site-packages folders after its own (a .pth file), whichever Python runs the tests."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO / "distdqn", src / "distdqn", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip_quiet = ["--quiet", "--no-index", "--disable-pip-version-check"]
    succeed([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
             *pip_quiet, "-w", str(root / "dist")], root)
    (wheel,) = (root / "dist").glob("distdqn-*.whl")
    venv = root / "venv"
    succeed([sys.executable, "-m", "venv", str(venv)], root)
    (venv_site,) = (venv / "lib").glob("python*/site-packages")
    outer = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (venv_site / "outer_site_packages.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in outer) + "\n")
    succeed([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--force-reinstall",
             *pip_quiet, str(wheel)], root)
    return venv / "bin"


def succeed(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, (cmd, result.stderr[-2000:])


def run_installed(bin_dir: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # cwd outside the tree and no PYTHONPATH: nothing but the venv can supply distdqn
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_the_venv_imports_the_wheel_not_a_checkout(installed_wheel, tmp_path):
    result = run_installed(installed_wheel, ["python", "-c", "import distdqn; print(distdqn.__file__)"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    site_packages = installed_wheel.parent / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert Path(result.stdout.strip()).resolve().is_relative_to(site_packages.resolve() / "site-packages"), \
        result.stdout


def test_the_installed_command_lists_the_presets(installed_wheel, tmp_path):
    result = run_installed(installed_wheel, ["distdqn", "presets"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split()[0] for line in result.stdout.splitlines()] == NAMES


@pytest.mark.parametrize("name", ["cartpole", "acrobot"])
def test_the_installed_command_trains_a_preset_by_name(installed_wheel, tmp_path, name):
    run_dir = tmp_path / "run"
    result = run_installed(installed_wheel, ["distdqn", "train", name, "--run-dir", str(run_dir), *TINY_RUN],
                           tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["env"]["id"] == load_config(name).env.id
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] >= 1500
