"""apex through the CLI on the session's real Ray cluster (joined with --address): it learns,
survives an actor's death, stops cleanly when the learner dies, resumes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest

from distdqn.metrics import read_metrics
from tests.helpers import REPO, kill_role_mid_run, ray_env, run_cli

MANY_CPUS = len(os.sched_getaffinity(0)) >= 2 if hasattr(os, "sched_getaffinity") else False


def assert_learner_has_its_own_cores(run_dir) -> None:
    """apex.isolate_learner: the learner's CPUs are the last ones, and no other process of the run
    (the replay server, actors, the driver: all on this one node) may run on them."""
    processes = json.loads((run_dir / "processes.json").read_text())
    learner = set(processes["learner"]["cpus"])
    assert learner == {max(os.sched_getaffinity(0))}, processes["learner"]
    others = {name: p["cpus"] for name, p in processes.items() if p["pid"] != processes["learner"]["pid"]}
    assert others and all(cpus and not learner & set(cpus) for cpus in others.values()), others


@pytest.mark.slow
def test_apex_solves_cartpole(tmp_path, ray_cluster):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "cartpole-apex", "--seed", "0", "--run-dir", str(run_dir),
                      "--address", ray_cluster, "--set", "log.progress=false",
                      # ends at the first solving evaluation; the budget only bounds a slow seed
                      "--set", "eval.stop_when_solved=true", "--set", "train.total_env_steps=100000"],
                     timeout=900, env=ray_env())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["solved"], summary
    assert summary["final_eval_return_mean"] >= 475 or any(
        r.get("eval_return_mean", 0) >= 475 for r in read_metrics(run_dir))
    rows = read_metrics(run_dir)
    logged = [r for r in rows if "replay_size" in r]   # the log rows (an evaluation may have a row of its own)
    assert logged and all("weight_lag_updates" in r for r in logged)


def steady_after(run_dir, env_steps: int):
    """A ready() for kill_role_mid_run: processes.json exists and the run is past ``env_steps``."""
    def ready() -> bool:
        rows = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
        return (run_dir / "processes.json").is_file() and bool(rows) and rows[-1]["env_steps"] >= env_steps
    return ready


@pytest.mark.slow
def test_a_killed_actor_costs_only_its_own_share(tmp_path, ray_cluster):
    """apex with 2 actors, actor 0 SIGKILLed mid-run: the other actor and the learner go on. A
    metrics row every 500 env steps (about 0.2-0.5 s): no gap between rows around the kill is
    longer than 2.5 s, and the 10 s after it run at over a third of the steps/s of the 10 s before
    (half the actors are left, while the new one starts). The replacement counts, and the run solves."""
    run_dir = tmp_path / "run"
    args = ["cartpole-apex", "--seed", "1", "--run-dir", str(run_dir), "--address", ray_cluster,
            "--set", "log.progress=false", "--set", "apex.num_actors=2", "--set", "apex.actor_cpus=0.5",
            "--set", "log.interval_env_steps=500", "--set", "train.total_env_steps=60000"]
    seen = {}

    def ready() -> bool:
        if steady_after(run_dir, 12_000)():
            seen["rows"] = read_metrics(run_dir)
            return True
        return False

    returncode, err, victim = kill_role_mid_run(args, "actor0", ready, wait_s=180, finish_s=900)
    assert returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["actor_restarts"] >= 1
    assert any("actor 0 died" in note for note in summary["notes"])
    assert summary["solved"], summary
    assert json.loads((run_dir / "processes.json").read_text())["actor0"]["pid"] != victim
    # every env step counted was sent; the replay took all the acknowledged ones, and of the rest at
    # most what was in flight (plus what the killed actor collected after its last report)
    assert summary["accepted_env_steps"] + summary["unacknowledged_at_kills_env_steps"] \
        + summary["unacknowledged_at_end_env_steps"] == summary["env_steps"]
    assert summary["replay_inserted_env_steps"] >= summary["accepted_env_steps"] > 0

    rows = read_metrics(run_dir)
    killed_at = seen["rows"][-1]["wall_s"]   # the kill came right after this row was read
    around = [r for r in rows if killed_at - 10 <= r["wall_s"] <= killed_at + 10]
    gaps = [(b["wall_s"] - a["wall_s"], a["env_steps"]) for a, b in itertools.pairwise(around)]
    assert max(g for g, _ in gaps) <= 2.5, gaps

    def rate(rs):
        return (rs[-1]["env_steps"] - rs[0]["env_steps"]) / (rs[-1]["wall_s"] - rs[0]["wall_s"])
    before = [r for r in around if r["wall_s"] <= killed_at]
    after = [r for r in around if r["wall_s"] > killed_at]
    print(f"kill after {killed_at:.1f} s; longest gap between rows {max(g for g, _ in gaps):.2f} s; "
          f"env steps/s 10 s before {rate(before):.0f}, 10 s after {rate(after):.0f}")
    assert rate(after) > rate(before) / 3, (rate(before), rate(after))


@pytest.mark.slow
@pytest.mark.parametrize("replay_host", ["learner", "process"])
def test_apex_resume_continues_from_its_checkpoint(tmp_path, ray_cluster, replay_host):
    run_dir = tmp_path / "run"
    first = run_cli(["train", "cartpole-apex", "--seed", "2", "--run-dir", str(run_dir),
                     "--address", ray_cluster, "--set", "train.total_env_steps=4000",
                     "--set", f"apex.replay_host={replay_host}", "--set", "log.progress=false"],
                    timeout=600, env=ray_env())
    assert first.returncode == 0, first.stderr[-3000:]
    before = json.loads((run_dir / "summary.json").read_text())
    assert before["learner_updates"] > 0
    if MANY_CPUS:
        assert_learner_has_its_own_cores(run_dir)

    resumed = run_cli(["train", "--resume", str(run_dir), "--address", ray_cluster,
                       "--set", "train.total_env_steps=9000"], timeout=600, env=ray_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["env_steps"] >= 9000
    # counters continue from the checkpoint instead of starting again. Over 5000 more steps each of
    # the actor's 8 envs (fresh episodes on resume) takes over 500 steps, so at least one episode
    # per env ends even if the policy already balances the pole (CI once saw none end in 4000)
    assert after["learner_updates"] > before["learner_updates"]
    assert after["episodes"] > before["episodes"]
    rows = read_metrics(run_dir)
    steps = [r["env_steps"] for r in rows]
    assert steps == sorted(steps)
    # the replay came back: its size right after resuming is at least what was saved
    resumed_rows = [r for r in rows if r["env_steps"] > before["env_steps"] and r.get("replay_size")]
    assert resumed_rows and resumed_rows[0]["replay_size"] >= before["env_steps"] * 0.9


@pytest.mark.slow
@pytest.mark.parametrize(("role", "replay_host"), [("learner", "learner"), ("replay", "process")])
def test_learner_or_replay_death_ends_the_run_clearly_and_keeps_the_checkpoint(tmp_path, ray_cluster, role,
                                                                                replay_host):
    run_dir = tmp_path / "run"
    args = ["cartpole-apex", "--seed", "4", "--run-dir", str(run_dir), "--address", ray_cluster,
            "--set", "log.progress=false", "--set", "checkpoint.interval_env_steps=2000",
            "--set", f"apex.replay_host={replay_host}"]
    returncode, err, _ = kill_role_mid_run(
        args, role, lambda: (run_dir / "checkpoints" / "latest").is_file(), wait_s=180, finish_s=300)
    assert returncode == 2, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and role in errors[0] and "checkpoint is intact" in errors[0], err[-2000:]
    assert not (run_dir / "summary.json").exists()
    # the last checkpoint is whole and usable
    evaluated = run_cli(["evaluate", str(run_dir), "--episodes", "3"])
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]


@pytest.mark.slow
def test_apex_starts_its_own_ray_when_given_no_address(tmp_path):
    """The embedded default: no cluster, no address, `distdqn train` with apex just works."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = run_cli(["train", "--set", "topology=apex", "--seed", "3", "--run-dir", str(run_dir),
                      "--set", "train.total_env_steps=3000", "--set", "log.progress=false"],
                     timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cluster_nodes"] == 1 and summary["env_steps"] >= 3000
    assert summary["learner_updates"] > 0
    if MANY_CPUS:
        assert_learner_has_its_own_cores(run_dir)


def test_inserts_follow_the_weight_sync_period_at_any_replay_ratio():
    """By default an insert holds the env steps the learner trains weight_sync_period updates on,
    so actors send about one insert per publication (and act about one period behind) whatever
    the replay ratio; an explicit apex.blocks_per_insert wins."""
    from distdqn.config import Config
    from distdqn.runtime.roles.experience_actor import blocks_per_insert

    def blocks(**sets):
        cfg = Config.model_validate({"topology": "apex", "env": {"num_envs": 8}, "train": {"steps_per_collect": 4},
                                     **sets})
        return blocks_per_insert(cfg)

    # one block = 4 vector steps x 8 envs = 32 env steps
    assert blocks(train={"steps_per_collect": 4, "replay_ratio": 0.5}, apex={"weight_sync_period": 48}) == 3
    assert blocks(train={"steps_per_collect": 4, "replay_ratio": 0.0625}, apex={"weight_sync_period": 48}) == 24
    assert blocks(train={"steps_per_collect": 4, "replay_ratio": 8.0}, apex={"weight_sync_period": 1}) == 1
    assert blocks(train={"steps_per_collect": 4, "replay_ratio": 0.5},
                  apex={"weight_sync_period": 48, "blocks_per_insert": 5}) == 5


def test_the_insert_ledger_moves_a_killed_actors_unacknowledged_env_steps_aside():
    """An actor's report counts its sends (experience) and the inserts accepted in the call (one may
    be a previous call's); a killed actor's sent-but-unacknowledged env steps leave the living total."""
    from distdqn.core.records import Experience
    from distdqn.runtime.messages import ActorReport
    from distdqn.topologies.apex import ApexCounters, InsertLedger

    def report(sent: int, accepted: int) -> ActorReport:
        return ActorReport(Experience(sent), 0, None, 0, accepted)

    counters = ApexCounters()
    ledger = InsertLedger(counters, num_actors=2)
    ledger.reported(0, report(sent=64, accepted=32))    # its second insert is in flight
    ledger.reported(1, report(sent=32, accepted=0))
    ledger.reported(0, report(sent=32, accepted=64))    # the one in flight, then this call's
    assert (counters.accepted_env_steps, ledger.pending) == (96, [0, 32])
    ledger.killed(1)
    assert (counters.unacknowledged_at_kills_env_steps, ledger.unacknowledged) == (32, 0)
    ledger.reported(1, report(sent=32, accepted=32))    # its replacement starts from nothing
    assert (counters.accepted_env_steps, ledger.unacknowledged) == (128, 0)


def test_the_learner_publishes_every_sync_period_and_weights_clients_take_the_newest(ray_cluster):
    """LearnerWorker on the session's cluster, driven as apex's driver and actors drive it (from a
    driver process of its own, tests/publication_driver.py): weights are put into the object store
    every weight_sync_period updates by its publisher thread, a train call reports the newest
    publication that is in the store, an insert is answered only with whether it was accepted, and
    an actor's weights client takes the newest publication without waiting for it."""
    result = subprocess.run([sys.executable, "-m", "tests.publication_driver", ray_cluster], check=False, cwd=REPO,
                            env=ray_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "published 32"


def test_apex_trains_a_categorical_head(tmp_path, ray_cluster):
    """C51 under apex trains end to end: the actors act on the categorical network's means, their
    transitions reach the prioritized replay (with no initial priorities: the learner's are
    cross-entropies, another unit than the actors' |TD errors|), and the learner's cross-entropy
    updates run."""
    run_dir = tmp_path / "run"
    result = run_cli(["train", "cartpole-apex", "--seed", "0", "--run-dir", str(run_dir), "--address", ray_cluster,
                      "--set", "log.progress=false", "--set", "train.total_env_steps=4000",
                      "--set", "log.interval_env_steps=1000", "--set", "eval.interval_env_steps=2000",
                      "--set", "network.atoms=51", "--set", "network.v_min=0", "--set", "network.v_max=100"],
                     timeout=300, env=ray_env())
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert rows[-1]["env_steps"] >= 4000 and rows[-1]["learner_updates"] > 0
    trained = [r for r in rows if r.get("loss") is not None]
    assert trained and all(r["loss"] > 0 for r in trained)   # cross-entropies: never zero
    assert any(r.get("replay_size") for r in rows)
