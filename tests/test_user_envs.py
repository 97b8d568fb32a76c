"""The user's own environment, in a module outside the package (written to a temporary folder):
trained by ``module:Id`` under ``single`` and under apex on the session's Ray cluster (the module
shipped to the workers, which do not have its folder), by a factory from the Python API (single,
and allreduce on the cluster), with the user's wrappers; and every way the user's code can fail
is one line naming the field, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import distdqn
from distdqn.errors import EnvironmentSpecError, UserError
from tests.helpers import REPO, ray_env, run_cli
from tests.test_cli_errors import assert_user_error

MODULE = "corridor_user_env"

# A corridor of 6 cells: start at 0, actions 0 = left and 1 = right, reward 1 on reaching cell 5.
# Registered as Corridor-v0 when imported; each import appends "pid file" to imports.log, so a
# test can see which processes imported it, and from where.
SOURCE = '''
import os
import gymnasium as gym
import numpy as np

with open({log!r}, "a") as log:
    log.write(f"{{os.getpid()}} {{__file__}}\\n")


class Corridor(gym.Env):
    def __init__(self, length=6, render_mode=None):
        self.length, self.render_mode = length, render_mode
        self.observation_space = gym.spaces.Discrete(length)
        self.action_space = gym.spaces.Discrete(2)
        self.metadata = {{"render_modes": ["rgb_array"], "render_fps": 10}}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.position = 0
        return self.position, {{}}

    def step(self, action):
        self.position = int(np.clip(self.position + (1 if action == 1 else -1), 0, self.length - 1))
        done = self.position == self.length - 1
        return self.position, float(done), done, False, {{}}

    def render(self):
        frame = np.zeros((8, 8 * self.length, 3), dtype=np.uint8)
        frame[:, 8 * self.position:8 * self.position + 8] = 255
        return frame


def make_corridor(length=6, **kwargs):
    return Corridor(length, **kwargs)


class ScaleReward(gym.RewardWrapper):
    def __init__(self, env, scale):
        super().__init__(env)
        self.scale = scale

    def reward(self, reward):
        return self.scale * reward


def not_an_env():
    return "a string"


def broken_factory():
    raise RuntimeError("the simulator licence expired")


def broken_wrapper(env):
    raise ValueError("this wrapper always fails")


NOT_CALLABLE = 3

gym.register("Corridor-v0", entry_point=Corridor, max_episode_steps=20, reward_threshold=1.0)
'''

LEARN = ["--set", "train.total_env_steps=3000", "--set", "train.learning_starts=300",
         "--set", "eval.interval_env_steps=1000", "--set", "log.progress=false",
         "--set", "train.torch_threads=1", "--set", "eval.stop_when_solved=true"]


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    """(folder holding corridor_user_env.py, its imports.log); the folder on this process's
    sys.path for the in-process tests, and on PYTHONPATH for the driver only (user_env)."""
    folder = tmp_path_factory.mktemp("user_code")
    log = folder / "imports.log"
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE.format(log=str(log))))
    sys.path.insert(0, str(folder))
    yield folder, log
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def user_env(folder: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(base or os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO)])
    return env


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# ---- module:Id ----

@pytest.mark.slow
def test_a_module_id_trains_under_single(tmp_path, user_module):
    folder, _ = user_module
    run_dir = tmp_path / "run"
    result = run_cli(["train", "--run-dir", str(run_dir), "--set", f"env.id={MODULE}:Corridor-v0", *LEARN],
                     env=user_env(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_of(run_dir)["solved"], summary_of(run_dir)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["env"]["id"] == f"{MODULE}:Corridor-v0"
    assert (run_dir / "checkpoints" / "best").is_dir()


@pytest.mark.slow
def test_a_module_id_trains_under_apex_the_module_shipped_to_the_workers(tmp_path, user_module, ray_cluster):
    """The cluster's nodes were started without the module's folder: its actor imports the copy
    that the run shipped with the job (Ray's runtime environment), not the folder's file."""
    folder, log = user_module
    run_dir = tmp_path / "run"
    result = run_cli(["train", "cartpole-apex", "--run-dir", str(run_dir), "--address", ray_cluster,
                      "--set", f"env.id={MODULE}:Corridor-v0", "--set", "apex.num_actors=1", *LEARN],
                     env=user_env(folder, ray_env()), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_of(run_dir)["solved"], summary_of(run_dir)
    actor_pid = json.loads((run_dir / "processes.json").read_text())["actor0"]["pid"]
    imports = dict(line.split(" ", 1) for line in log.read_text().splitlines())
    assert str(actor_pid) in imports, (actor_pid, imports)
    shipped = Path(imports[str(actor_pid)].strip())
    assert shipped.name == f"{MODULE}.py" and not shipped.is_relative_to(folder), shipped


# ---- a factory from the Python API ----

@pytest.mark.slow
def test_a_factory_trains_from_the_python_api_with_a_wrapper(tmp_path, user_module):
    """env.make by the factory itself (it names itself in config.yaml: module:function) and a
    wrapper from the same module; then the agent acts on the env's own observations."""
    corridor = __import__(MODULE)
    run = distdqn.train(env=corridor.make_corridor, run_dir=tmp_path / "run", verbose=False,
                        overrides={"env.kwargs": {"length": 5}, "eval.solve_threshold": 2.0,
                                   "env.wrappers": [{"wrapper": f"{MODULE}:ScaleReward", "kwargs": {"scale": 2.0}}],
                                   "train.total_env_steps": 3000, "train.learning_starts": 300,
                                   "eval.interval_env_steps": 1000, "log.progress": False,
                                   "eval.stop_when_solved": True})
    assert run.summary["solved"], run.summary
    assert run.config.env.make == f"{MODULE}:make_corridor" and run.config.env.id == "make_corridor"
    assert run.metrics[-1]["eval_return_mean"] == 2.0
    agent = distdqn.load(run.dir)
    assert agent.checkpoint.name == "best"
    assert agent.act(0) == 1 and agent.act(np.array([0, 1, 2])).tolist() == [1, 1, 1]
    assert agent.q_values(3).shape == (2,) and agent.q_values(np.array([3, 4])).shape == (2, 2)


def test_a_callable_config_yaml_cannot_name_is_handed_again(tmp_path, user_module):
    """A lambda is no name: config.yaml says what it was, evaluating without it is one line, with it works."""
    corridor = __import__(MODULE)
    factory = lambda: corridor.Corridor(4)
    run = distdqn.train(env=factory, run_dir=tmp_path / "run", verbose=False,
                        overrides=["train.total_env_steps=400", "train.learning_starts=100",
                                   "eval.interval_env_steps=200", "log.progress=false"])
    saved = yaml.safe_load((run.dir / "config.yaml").read_text())["env"]["make"]
    assert saved.startswith("<python ") and "<lambda>" in saved
    with pytest.raises(EnvironmentSpecError, match="env.make: .* hand it again"):
        distdqn.load(run.dir)
    assert len(distdqn.evaluate(run.dir, episodes=3, env=factory).returns) == 3


@pytest.mark.slow
def test_a_factory_trains_under_allreduce_on_the_cluster(tmp_path, user_module, ray_cluster):
    """Every topology takes a factory: the Python API in a driver of its own, joining the cluster
    whose workers lack the module's folder; the factory's module travels with the job."""
    folder, log = user_module
    run_dir = tmp_path / "run"
    script = textwrap.dedent(f"""
        import distdqn, {MODULE}
        run = distdqn.train("cartpole-allreduce", env={MODULE}.make_corridor, run_dir={str(run_dir)!r},
                            address={ray_cluster!r}, overrides={{"train.total_env_steps": 3000,
                            "train.learning_starts": 300, "eval.interval_env_steps": 1000,
                            "log.progress": False, "eval.stop_when_solved": True, "eval.solve_threshold": 1.0}})
        print(run.summary["solved"])
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=user_env(folder, ray_env()),
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "True", result.stdout
    workers = [p["pid"] for name, p in json.loads((run_dir / "processes.json").read_text()).items()
               if name.startswith("worker")]
    imports = dict(line.split(" ", 1) for line in log.read_text().splitlines())
    assert workers and all(not Path(imports[str(pid)].strip()).is_relative_to(folder) for pid in workers), imports


# ---- the user's code failing: one line naming the field, nothing written ----

@pytest.mark.parametrize(("overrides", "fragments"), [
    (["env.id=no_such_user_module:Corridor-v0"], ["env.id", "cannot import module 'no_such_user_module'"]),
    ([f"env.id={MODULE}:Nowhere-v0"], ["env.id", "registers no 'Nowhere-v0'"]),
    (["env.make=no_such_user_module:make"], ["env.make", "cannot import module 'no_such_user_module'"]),
    ([f"env.make={MODULE}:NOT_CALLABLE"], ["env.make", "is a int, not a callable"]),
    ([f"env.make={MODULE}:missing"], ["env.make", "has no 'missing'"]),
    ([f"env.make={MODULE}:not_an_env"], ["env.make", "returned a str, not a gymnasium.Env"]),
    ([f"env.make={MODULE}:broken_factory"], ["env.make", "RuntimeError: the simulator licence expired"]),
    ([f"env.make={MODULE}:make_corridor", f"env.wrappers=['{MODULE}:broken_wrapper']"],
     ["env.wrappers[0]", "ValueError: this wrapper always fails"]),
    ([f"env.make={MODULE}:make_corridor", "env.wrappers=['no_such_user_module:W']"],
     ["env.wrappers[0].wrapper", "cannot import module"]),
    ([f"env.make={MODULE}:make_corridor", "env.wrappers=[{wrapper: 3}]"], ["env.wrappers.0.wrapper", "must be"]),
    (["env.make=make_corridor"], ["env.make", "should be package.module:name"]),
    (["env.id=ALE/Pong-v5", f"env.wrappers=['{MODULE}:ScaleReward']"], ["env.wrappers", "AtariVectorEnv", "env.make"]),
    ([f"env.make={MODULE}:make_corridor", "env.vectorization=native"], ["env.vectorization", "auto, sync or async"]),
])
def test_the_users_code_failing_is_one_line_naming_the_field(tmp_path, user_module, overrides, fragments):
    folder, _ = user_module
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir)]
    for o in overrides:
        args += ["--set", o]
    assert_user_error(run_cli(args, env=user_env(folder)), *fragments)
    assert not run_dir.exists()


def test_an_env_instance_is_refused_for_a_factory(tmp_path, user_module):
    corridor = __import__(MODULE)
    with pytest.raises(UserError, match="env: pass a factory"):
        distdqn.train(env=corridor.Corridor(), run_dir=tmp_path / "run", verbose=False)
    assert not (tmp_path / "run").exists()
