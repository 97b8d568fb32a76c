"""`distdqn tune`: the space read and checked before anything starts, the score's order, the
preset it writes, and real searches on Ray Tune (ASHA stopping a trial that cannot learn; an
interrupted search resumed without training its finished trials again)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distdqn.config import load_config
from distdqn.tuning.space import Distribution, SpaceError, baseline_values, override, plan_search
from distdqn.tuning.trial import MetricsTail, score
from tests.helpers import REPO, ray_env, run_cli


def space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


# ---- the space ----

@pytest.mark.parametrize("spec, message", [
    ({"uniform": [0.2, 0.1]}, "uniform [0.2, 0.1] is an empty range"),
    ({"uniform": [0.1, 0.1]}, "is an empty range"),
    ({"int": [5, 1]}, "int [5, 1] is an empty range"),
    ({"choice": []}, "choice [] is empty"),
    ({"loguniform": [0, 1]}, "needs low > 0"),
    ({"int": [1.5, 3]}, "takes two integers"),
    ({"normal": [0, 1]}, "unknown distribution 'normal'"),
    ({"uniform": [1]}, "takes [low, high]"),
    (0.1, "expected one of choice"),
])
def test_a_bad_distribution_is_one_line_naming_its_key(spec, message):
    with pytest.raises(SpaceError) as err:
        Distribution.parse("learner.lr", spec)
    assert str(err.value).startswith("space: learner.lr: ") and message in str(err.value)


def test_int_ranges_include_both_ends_and_contain_what_they_sample():
    dist = Distribution.parse("replay.n_step", {"int": [1, 3]})
    domain = dist.tune_domain()
    samples = {domain.sample() for _ in range(300)}
    assert samples == {1, 2, 3}
    assert dist.contains(3) and not dist.contains(4) and not dist.contains(2.5)
    log = Distribution.parse("learner.lr", {"loguniform": [1e-4, 1e-2]}).tune_domain()
    values = [log.sample() for _ in range(300)]
    assert all(1e-4 <= v <= 1e-2 for v in values)
    assert sum(v < 1e-3 for v in values) > 100   # log-uniform: half the mass below the geometric mean


def test_overrides_are_what_set_reads():
    for key, value in [("learner.lr", 1e-4), ("network.hidden_sizes", [64, 64]), ("learner.double_dqn", False),
                       ("replay.n_step", 3)]:
        cfg = load_config("cartpole", [override(key, value)])
        section, field = key.split(".")
        assert getattr(getattr(cfg, section), field) == value


@pytest.mark.parametrize("text, message", [
    ("space:\n  learner.lrr: {uniform: [0.1, 0.2]}\n", "space: learner.lrr: uniform value 0.1 is refused: learner.lrr"),
    ("space:\n  learner.lr: {uniform: [-1, 0.1]}\n", "space: learner.lr: uniform value -1.0 is refused"),
    ("space:\n  learner.lr: {uniform: [0.3, 0.1]}\n", "space: learner.lr: uniform [0.3, 0.1] is an empty range"),
    ("space: {}\n", "non-empty `space:`"),
    ("space:\n  learner.lr: {uniform: [0.1, 0.2]}\ntrial: 3\n", "unknown setting 'trial'"),
    ("space:\n  learner.lr: {uniform: [0.1, 0.2]}\nobjective: speed\n", "objective: 'speed' is not one of"),
    ("space:\n  learner.lr: {uniform: [0.1, 0.2]}\ntrials: 0\n", "trials: expected an integer >= 1"),
    ("space:\n  learner.lr: {uniform: [0.1, 0.2]}\n", "budget_s: objective time_to_solve needs"),
])
def test_a_bad_space_is_refused_naming_the_key_before_anything_is_made(tmp_path, text, message):
    out = tmp_path / "search"
    with pytest.raises(SpaceError) as err:
        plan_search("cartpole", space_file(tmp_path, text), out)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_the_cli_says_it_in_one_line_with_exit_status_2(tmp_path):
    out = tmp_path / "search"
    text = "space:\n  learner.lrr: {uniform: [0.1, 0.2]}\nbudget_s: 10\n"
    result = run_cli(["tune", "cartpole", "--space", str(space_file(tmp_path, text)), "--out", str(out)])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: space: learner.lrr: "), result.stderr
    assert not out.exists()


def test_an_occupied_directory_is_kept(tmp_path):
    space = space_file(tmp_path, "space:\n  learner.lr: {uniform: [1.0e-3, 2.0e-3]}\nbudget_s: 10\n")
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    for flags, message in [([], "already exists and is not empty"), (["--overwrite"], "is not a distdqn search"),
                           ([], "")]:
        argv = ["tune", "cartpole", "--space", str(space), "--out", str(out), *flags]
        if not message:
            argv = ["tune", "--resume", str(out)]
            message = "holds no search"
        result = run_cli(argv)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert (out / "mine.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_the_base_config_is_the_first_trial_only_when_the_space_holds_it(tmp_path):
    def plan(text):
        return plan_search("cartpole", space_file(tmp_path, text + "budget_s: 10\n"), tmp_path / "o")
    inside = plan("space:\n  learner.lr: {loguniform: [1.0e-3, 1.0e-2]}\n  replay.n_step: {int: [1, 5]}\n")
    assert inside.baseline == {"learner.lr": 2.5e-3, "replay.n_step": 3}
    outside = plan("space:\n  learner.lr: {loguniform: [1.0e-5, 1.0e-4]}\n")
    assert outside.baseline is None
    assert baseline_values("cartpole", inside.cfg, {"learner.batch_size": Distribution.parse(
        "learner.batch_size", {"choice": [32, 128]})}) is None     # 64 is not a choice


# ---- the score ----

def test_the_score_puts_every_solve_above_every_miss_and_earlier_solves_higher():
    threshold, max_t = -100.0, 60.0
    solved_late = score("time_to_solve", threshold, max_t, -90.0, 50.0)
    solved_early = score("time_to_solve", threshold, max_t, -95.0, 10.0)
    missed_close = score("time_to_solve", threshold, max_t, -101.0, None)
    missed_far = score("time_to_solve", threshold, max_t, -400.0, None)
    assert solved_early > solved_late > missed_close > missed_far
    assert score("return", 475.0, 1e4, 300.0, 5000.0) == 300.0
    assert score("time_to_solve", 475.0, 60.0, None, None) == float("-inf")


def test_a_torn_metrics_line_waits_for_its_end(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.rows() == []
    path.write_text('{"a": 1}\n{"b": ')
    assert tail.rows() == [{"a": 1}]
    with path.open("a") as f:
        f.write('2}\n')
    assert tail.rows() == [{"b": 2}] and tail.rows() == []


# ---- real searches ----

SPACE = """\
space:
  learner.lr: {choice: [2.5e-3, 1.0e-7]}
  train.replay_ratio: {choice: [0.5, 0.25]}
trials: 4
objective: env_steps_to_solve
search: random
seed: 0
"""


def read_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_a_search_stops_what_cannot_learn_verifies_on_fresh_seeds_and_writes_a_preset(tmp_path, ray_cluster):
    """CartPole, 4 trials starting from the preset; ASHA (on env steps) stops the trials whose
    learning rate (1e-7) cannot learn; the best configs are trained again on seeds the search never
    saw; best.yaml is a preset that trains, holding the best verified trial's values."""
    out = tmp_path / "search"
    result = run_cli(["tune", "cartpole", "--space", str(space_file(tmp_path, SPACE)), "--out", str(out),
                      "--set", "train.total_env_steps=9000", "--verify-top", "2", "--verify-seeds", "1",
                      "--address", ray_cluster], timeout=600, env=ray_env())
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(out)
    trials = results["trials"]
    assert len(trials) == 4
    first = min(trials, key=lambda t: t["started_at"])
    assert first["params"] == {"learner.lr": 2.5e-3, "train.replay_ratio": 0.5}     # the preset as it is
    for t in trials:
        assert (Path(t["run_dir"]) / "summary.json").is_file()                       # ordinary run directories
        summary = json.loads((Path(t["run_dir"]) / "summary.json").read_text())
        config = load_config(Path(t["run_dir"]) / "config.yaml")
        assert config.learner.lr == t["params"]["learner.lr"] and config.seed == 0
        if t["status"] == "stopped":
            assert summary["stop_reason"] == "terminated" and summary["env_steps"] < 9000
    hopeless = [t for t in trials if t["params"]["learner.lr"] == 1e-7]
    assert hopeless and all(t["status"] == "stopped" for t in hopeless), trials
    assert trials[0]["params"]["learner.lr"] == 2.5e-3                               # ranked first
    verified = json.loads((out / "verify" / "results.json").read_text())
    seeds = {run["seed"] for run in verified["runs"]}
    assert seeds == {1000}
    best = load_config(out / "best.yaml")
    chosen = next(t for t in trials if t["trial_id"] == results["best"])
    assert best.learner.lr == chosen["params"]["learner.lr"]
    assert best.train.replay_ratio == chosen["params"]["train.replay_ratio"]
    assert best.train.total_env_steps == 9000 and not best.eval.stop_when_solved
    report = (out / "report.md").read_text()
    assert results["best"] in report and "stopped at" in report
    assert (out / "search.png").stat().st_size > 10_000
    trained = run_cli(["train", str(out / "best.yaml"), "--run-dir", str(tmp_path / "again"),
                       "--set", "train.total_env_steps=600", "--set", "log.progress=false"])
    assert trained.returncode == 0, trained.stderr[-2000:]


@pytest.mark.slow
def test_an_interrupted_search_resumes_without_training_its_finished_trials_again(tmp_path, ray_cluster):
    space = space_file(tmp_path, SPACE.replace("trials: 4", "trials: 3").replace("1.0e-7", "2.0e-3"))
    out = tmp_path / "search"
    argv = [sys.executable, "-m", "distdqn.cli", "tune", "cartpole", "--space", str(space), "--out", str(out),
            "--set", "train.total_env_steps=4000", "--verify-top", "0", "--address", ray_cluster]
    log = tmp_path / "tune.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                                env=dict(ray_env(), PYTHONWARNINGS="ignore::DeprecationWarning"))
    try:   # once Tune has counted one trial ended (its line "[1/3] ..."), stop the search
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and "[1/3]" not in log.read_text():
            time.sleep(0.2)
        ended = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("[1/3]")]
        assert ended, log.read_text()[-3000:]
        finished = {name: (out / "trials" / name / "summary.json").stat().st_mtime_ns for name in ended}
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = log.read_text()
    assert proc.returncode == 130, err[-3000:]
    assert "--resume" in err and not (out / "report.md").exists(), err[-2000:]
    resumed = run_cli(["tune", "--resume", str(out), "--address", ray_cluster], timeout=600, env=ray_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = read_results(out)["trials"]
    assert len(trials) == 3 and all(t["status"] in ("solved", "unsolved", "stopped") for t in trials), trials
    for name, mtime in finished.items():   # a trial that had finished was not trained again
        assert (out / "trials" / name / "summary.json").stat().st_mtime_ns == mtime
