"""`distdqn compare`: the aggregation on hand-made runs with known answers, one real comparison
end to end through the CLI, and its refusals (nothing written)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import distdqn.compare.run
from distdqn.cli import app
from distdqn.compare import config_labels
from distdqn.compare.plots import median_curve
from distdqn.compare.report import Spread, aggregate, markdown_table
from distdqn.compare.run import RunOutcome, failure_line, run_one
from tests.helpers import REPO, run_cli
from tests.test_cli_errors import assert_user_error

PNG = b"\x89PNG\r\n\x1a\n"


def outcome(label, seed, topology="single", *, solved=False, time_to_solve_s=None, env_steps_to_solve=None,
            final=100.0, wall_s=10.0, env_steps=40_000, learner_updates=20_000, error=None):
    summary = None if error else {
        "solved": solved, "time_to_solve_s": time_to_solve_s, "env_steps_to_solve": env_steps_to_solve,
        "final_eval_return_mean": final, "wall_s": wall_s, "env_steps": env_steps,
        "learner_updates": learner_updates, "solve_threshold": 475.0}
    return RunOutcome(label, topology, f"{label}.yaml", seed, f"runs/{label}-s{seed}",
                      2 if error else 0, error, summary)


# ---- aggregation: pure, hand-computed answers ----

def test_spread_is_median_and_range():
    assert Spread.of([3, 1, 2]) == Spread(2.0, 1.0, 3.0, 3)
    assert Spread.of([4, 1, 2, 10]) == Spread(3.0, 1.0, 10.0, 4)   # even count: mean of the middle two
    assert Spread.of([]) is None


HAND_MADE = [
    # single: two of three seeds solve; 4000, 2000 and 1000 env steps/s
    outcome("single", 0, solved=True, time_to_solve_s=4.0, env_steps_to_solve=10_000, final=500.0, wall_s=10.0),
    outcome("single", 1, solved=True, time_to_solve_s=6.0, env_steps_to_solve=14_000, final=480.0, wall_s=20.0),
    outcome("single", 2, solved=False, final=300.0, wall_s=40.0, learner_updates=8_000),
    # apex: one seed solves, one fails; 4000 and 8000 env steps/s
    outcome("apex", 0, "apex", solved=True, time_to_solve_s=9.0, env_steps_to_solve=30_000, final=490.0,
            wall_s=10.0),
    outcome("apex", 1, "apex", final=200.0, wall_s=5.0),
    outcome("apex", 2, "apex", error="error: --address 10.0.0.1:6379: cannot reach a Ray cluster there"),
]


def test_aggregate_known_answers():
    aggs = aggregate(HAND_MADE)
    assert list(aggs) == ["single", "apex"]

    single = aggs["single"]
    assert (single.runs, single.completed, single.failed, single.solved) == (3, 3, 0, 2)
    # solve figures over the solving seeds only: the unsolved seed would otherwise pull them around
    assert single.time_to_solve_s == Spread(5.0, 4.0, 6.0, 2)
    assert single.env_steps_to_solve == Spread(12_000.0, 10_000.0, 14_000.0, 2)
    assert single.final_eval_return == Spread(480.0, 300.0, 500.0, 3)
    assert single.env_steps_per_s == Spread(2000.0, 1000.0, 4000.0, 3)
    assert single.updates_per_s == Spread(1000.0, 200.0, 2000.0, 3)
    assert single.throughput_vs_single == pytest.approx(1.0)

    apex = aggs["apex"]
    assert (apex.runs, apex.completed, apex.failed, apex.solved) == (3, 2, 1, 1)
    assert apex.time_to_solve_s == Spread(9.0, 9.0, 9.0, 1)
    assert apex.final_eval_return == Spread(345.0, 200.0, 490.0, 2)
    assert apex.env_steps_per_s == Spread(6000.0, 4000.0, 8000.0, 2)
    assert apex.throughput_vs_single == pytest.approx(3.0)    # median 6000 / median 2000
    assert apex.errors == ["seed 2: error: --address 10.0.0.1:6379: cannot reach a Ray cluster there"]


def test_no_single_config_no_throughput_ratio():
    aggs = aggregate([r for r in HAND_MADE if r.topology == "apex"])
    assert aggs["apex"].throughput_vs_single is None
    assert "throughput vs single" not in markdown_table(aggs)


def test_ratio_is_to_the_first_single_config_when_two_share_the_topology():
    runs = [outcome("small", 0, wall_s=10.0), outcome("big", 0, wall_s=20.0), outcome("apex", 0, "apex", wall_s=5.0)]
    aggs = aggregate(runs)
    assert [aggs[k].throughput_vs_single for k in ("small", "big", "apex")] == pytest.approx([1.0, 0.5, 2.0])


def test_markdown_table_rows():
    table = markdown_table(aggregate(HAND_MADE)).splitlines()
    assert len(table) == 4
    assert table[0].startswith("| config | runs solved | time to solve (s) |")
    assert table[0].endswith("| throughput vs single |")
    assert table[2] == ("| single | 2/3 | 5.00 [4.00–6.00] | 12,000 [10,000–14,000] | 480.0 [300.0–500.0] "
                        "| 2,000 [1,000–4,000] | 1,000 [200–2,000] | 1.00x |")
    assert table[3] == ("| apex | 1/3 (1 failed) | 9.00 [9.00–9.00] | 30,000 [30,000–30,000] "
                        "| 345.0 [200.0–490.0] | 6,000 [4,000–8,000] | 3,000 [2,000–4,000] | 3.00x |")


def test_nothing_solved_shows_a_dash():
    table = markdown_table(aggregate([outcome("single", 0), outcome("single", 1)])).splitlines()
    assert table[2].startswith("| single | 0/2 | – | – | 100.0 [100.0–100.0] |")


def test_labels_are_topologies_or_names_where_a_topology_repeats():
    assert config_labels(["cartpole", "cartpole-apex"], ["single", "apex"]) == ["single", "apex"]
    # where a topology repeats: a preset's name, or a file's stem
    assert config_labels(["cartpole", "acrobot", "cartpole-apex"],
                         ["single", "single", "apex"]) == ["cartpole", "acrobot", "apex"]
    assert config_labels(["a/cartpole.yaml", "b/wide.yaml", "cartpole-apex.yaml"],
                         ["single", "single", "apex"]) == ["cartpole", "wide", "apex"]
    # the same stem twice (two folders, or one file given twice): numbered in the order given
    assert config_labels(["a/c.yaml", "b/c.yaml"], ["single", "single"]) == ["c-1", "c-2"]


def test_failure_line_prefers_the_last_error_line():
    stderr = "run directory: x\nerror: first\nTraceback...\nerror: replay died\nshutting down\n"
    assert failure_line(stderr, 2) == "error: replay died"
    assert failure_line("one\nlast words\n\n", 1) == "last words"
    assert failure_line("", -9) == "killed by signal 9"


def test_run_one_records_a_failing_command(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('hi'); print('error: boom', file=sys.stderr); sys.exit(2)"]
    log = tmp_path / "runs" / "x-s0.log"
    assert run_one(argv, tmp_path / "runs" / "x-s0", log) == (2, "error: boom", None)
    assert "hi" in log.read_text() and "error: boom" in log.read_text()


def test_median_curve_on_a_common_grid():
    curves = [([0.0, 10.0], [0.0, 10.0]), ([0.0, 10.0], [0.0, 30.0]), ([0.0, 5.0], [0.0, 100.0])]
    grid, median = median_curve(curves, points=11)
    np.testing.assert_allclose(grid, np.arange(11.0))
    # at x=4: 4, 12, 80 -> 12; at x=10 the third run (ended at 5) holds 100: 10, 30, 100 -> 30
    assert median[4] == pytest.approx(12.0) and median[10] == pytest.approx(30.0)


# ---- end to end through the CLI ----

SMALL = ["--set", "train.total_env_steps=2000", "--set", "eval.interval_env_steps=1000",
         "--set", "log.interval_env_steps=1000", "--set", "train.torch_threads=1",
         "--set", "eval.solve_threshold=50"]


def write_configs(tmp_path):
    preset = yaml.safe_load((REPO / "distdqn" / "presets" / "cartpole.yaml").read_text())
    base, small = tmp_path / "base.yaml", tmp_path / "small.yaml"
    base.write_text(yaml.safe_dump(preset))
    small.write_text(yaml.safe_dump({**preset, "network": {**preset["network"], "hidden_sizes": [64, 64]}}))
    return base, small


def spread(values, fmt):
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}–{max(values):{fmt}}]" if values else "–"


def test_compare_end_to_end(tmp_path):
    base, small = write_configs(tmp_path)
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier comparison")
    result = run_cli(["compare", str(base), str(small), "--seeds", "2", "--out", str(out), "--overwrite",
                      *SMALL], timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "stale.txt").exists()
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 4 and progress[0].startswith("[1/4] base seed 0: ")

    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4 and results["reference_label"] == "base"
    assert {(r["label"], r["seed"]) for r in results["runs"]} == {
        (label, seed) for label in ("base", "small") for seed in (0, 1)}

    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith(("| base |", "| small |"))]
    table_rows = {line.split(" | ")[0][2:]: line for line in rows if "/2" in line}
    assert sorted(table_rows) == ["base", "small"]
    rates = {}
    for label, row in table_rows.items():
        summaries = [json.loads((out / "runs" / f"{label}-s{seed}" / "summary.json").read_text())
                     for seed in (0, 1)]
        assert all(s["env_steps"] >= 2000 and s["solve_threshold"] == 50 for s in summaries)
        solving = [s for s in summaries if s["solved"]]
        rates[label] = [s["env_steps"] / s["wall_s"] for s in summaries]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:7] == [
            label, f"{len(solving)}/2",
            spread([s["time_to_solve_s"] for s in solving], ".2f"),
            spread([s["env_steps_to_solve"] for s in solving], ",.0f"),
            spread([s["final_eval_return_mean"] for s in summaries], ".1f"),
            spread(rates[label], ",.0f"),
            spread([s["learner_updates"] / s["wall_s"] for s in summaries], ",.0f")]
    assert table_rows["base"].endswith("| 1.00x |")
    ratio = statistics.median(rates["small"]) / statistics.median(rates["base"])
    assert table_rows["small"].endswith(f"| {ratio:.2f}x |")
    assert "distdqn compare" in report and "- commit: " in report and "- machine: " in report

    for name in ("return_vs_env_steps.png", "return_vs_wall_s.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5_000, name


# A stand-in for `distdqn train` (argv: label seed run_dir): seed 1 of `small` fails, the others
# write a run directory with known figures.
FAKE_TRAIN = """
import json, pathlib, sys
label, seed, run_dir = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
if label == "small" and seed == 1:
    print("run directory: " + str(run_dir), file=sys.stderr)
    print("error: replay: out of memory", file=sys.stderr)
    print("shutting down", file=sys.stderr)
    sys.exit(2)
run_dir.mkdir(parents=True)
wall = 10.0 * (seed + 1)
rows = [{"env_steps": s, "wall_s": wall * s / 4000, "eval_return_mean": s / 10, "eval_env_steps": s}
        for s in (1000, 2000, 3000, 4000)]
run_dir.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
run_dir.joinpath("summary.json").write_text(json.dumps({
    "solved": seed == 0, "solve_threshold": 300.0, "time_to_solve_s": 7.5 if seed == 0 else None,
    "env_steps_to_solve": 3000 if seed == 0 else None, "final_eval_return_mean": 400.0,
    "wall_s": wall, "env_steps": 4000, "learner_updates": 2000}))
"""


def test_a_failed_run_is_recorded_and_the_comparison_goes_on(tmp_path, monkeypatch):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    monkeypatch.setattr(distdqn.compare.run, "train_argv", lambda plan, entry, seed, run_dir: [
        sys.executable, str(fake), entry.label, str(seed), str(run_dir)])
    base, small = write_configs(tmp_path)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["compare", str(base), str(small), "--seeds", "2", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "[4/4] small seed 1: FAILED (exit 2): error: replay: out of memory" in result.stderr

    report = (out / "report.md").read_text()
    assert ("| small | 1/2 (1 failed) | 7.50 [7.50–7.50] | 3,000 [3,000–3,000] | 400.0 [400.0–400.0] "
            "| 400 [400–400] | 200 [200–200] | 1.33x |") in report    # 400 / median(400, 200)
    assert "- small, seed 1: error: replay: out of memory" in report
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["error"] for r in runs] == [None, None, None, "error: replay: out of memory"]
    assert "out of memory" in (out / "runs" / "small-s1.log").read_text()
    for name in ("return_vs_env_steps.png", "return_vs_wall_s.png"):
        assert (out / name).read_bytes()[:8] == PNG


def test_different_environments_are_refused(tmp_path):
    out = tmp_path / "report"
    result = run_cli(["compare", "cartpole", "acrobot", "--seeds", "1", "--out", str(out)])
    assert_user_error(result, "CartPole-v1", "Acrobot-v1", "cartpole has", "acrobot has")
    assert not out.exists()


def test_existing_report_directory_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("an earlier comparison")
    assert_user_error(run_cli(["compare", "cartpole", "--seeds", "1", "--out", str(out)]), "--overwrite")
    assert [p.name for p in out.iterdir()] == ["report.md"]
    assert (out / "report.md").read_text() == "an earlier comparison"


def test_git_commit_outside_a_checkout_and_dirty_inside(tmp_path):
    from distdqn.compare.report import git_commit

    assert git_commit(tmp_path) == "unknown"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    if subprocess.run([*git, "init", "-q"], check=False).returncode != 0:
        pytest.skip("git not available")
    (tmp_path / "a.txt").write_text("a")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True)
    assert git_commit(tmp_path) == head.stdout.strip()
    (tmp_path / "b.txt").write_text("b")
    assert git_commit(tmp_path) == head.stdout.strip() + "+dirty"


# A stand-in for `distdqn train` in a sweep (argv: value seed run_dir): throughput doubles from
# 1 to 2 workers and stays there at 4 (efficiency 100%, 100%, 50%).
FAKE_SWEEP_TRAIN = """
import json, pathlib, sys
value, seed, run_dir = int(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])
run_dir.mkdir(parents=True)
wall = 40.0 / min(value, 2)
rows = [{"env_steps": s, "wall_s": wall * s / 4000, "eval_return_mean": s / 10, "eval_env_steps": s}
        for s in (1000, 2000, 3000, 4000)]
run_dir.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
run_dir.joinpath("summary.json").write_text(json.dumps({
    "solved": True, "solve_threshold": 300.0, "time_to_solve_s": wall * 0.75, "env_steps_to_solve": 3000,
    "final_eval_return_mean": 400.0, "wall_s": wall, "env_steps": 4000, "learner_updates": 2000}))
"""


def test_sweep_reports_throughput_speed_up_and_efficiency_against_the_value(tmp_path, monkeypatch):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_SWEEP_TRAIN)
    seen, real_argv = [], distdqn.compare.run.train_argv

    def argv(plan, entry, seed, run_dir):
        seen.append(real_argv(plan, entry, seed, run_dir))   # what `distdqn train` would have been given
        return [sys.executable, str(fake), entry.sweep_value, str(seed), str(run_dir)]

    monkeypatch.setattr(distdqn.compare.run, "train_argv", argv)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["compare", "cartpole-allreduce", "--seeds", "1", "--out", str(out),
                                      "--sweep", "workers.num_workers=1,2,4"])
    assert result.exit_code == 0, result.output
    # each run gets its value of the swept key as a --set
    values = [a[a.index("--set", a.index("log.progress=false")) + 1] for a in seen]
    assert values == ["workers.num_workers=1", "workers.num_workers=2", "workers.num_workers=4"]
    report = (out / "report.md").read_text()
    assert "## Against `workers.num_workers`" in report
    assert "| allreduce | 1 | 100 [100–100] | 1.00x | 100% | 1/1 | 30.00 [30.00–30.00] |" in report
    assert "| allreduce | 2 | 200 [200–200] | 2.00x | 100% | 1/1 | 15.00 [15.00–15.00] |" in report
    assert "| allreduce | 4 | 200 [200–200] | 2.00x | 50% | 1/1 | 15.00 [15.00–15.00] |" in report
    assert (out / "sweep.png").read_bytes()[:8] == PNG
    results = json.loads((out / "results.json").read_text())
    assert results["sweep"] == {"key": "workers.num_workers", "values": ["1", "2", "4"]}
    assert [c["sweep_value"] for c in results["configs"]] == ["1", "2", "4"]
    assert (out / "runs" / "allreduce_num_workers=4-s0" / "summary.json").is_file()


@pytest.mark.parametrize(("sweep", "fragments"), [
    ("workers.num_workers", ["--sweep", "KEY=V1,V2"]),
    ("workers.num_workers=1,0", ["workers.num_workers"]),
    ("workers.num_wrkers=1,2", ["workers.num_wrkers"]),
])
def test_a_bad_sweep_is_one_line_and_writes_nothing(tmp_path, sweep, fragments):
    out = tmp_path / "report"
    assert_user_error(run_cli(["compare", "cartpole-allreduce", "--seeds", "1", "--out", str(out),
                               "--sweep", sweep]), *fragments)
    assert not out.exists()
