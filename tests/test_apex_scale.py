"""apex past one learner and one replay (issue 23): the replay ratio held over shards whose
views lag, the pre-flight placement, cores per learner; and through the CLI on the session's
Ray cluster, a group of 2 learners over 2 shards (replicas identical after 1,000 updates, every
learner's priorities back in their shards), checkpoints of every shard (another shard count
refused in one line, another learner count resumed), a run that cannot be placed refused in
one line, and a lost shard or learner ending the run in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distdqn.core.ratelimit import RateLimiter, ShardLimiter
from distdqn.core.ratio import ReplayRatio
from distdqn.local.affinity import last_blocks
from distdqn.runtime.cluster import ClusterError
from distdqn.runtime.placement import Demand, Node, first_unplaced, require_placement
from tests.helpers import REPO, kill_role_mid_run, ray_env, run_cli

# ---- the replay ratio over shards (core/ratelimit.py) ----


def test_the_ratio_holds_over_two_shards_whose_views_lag_and_never_deadlocks():
    """Actors insert into either shard at random speeds; the learner knows the shards' env steps
    only from its last draw or poll, each shard the updates and the other's env steps only from
    the learner's last word. The ratio over both shards stays within the slack (plus one insert
    per shard), and whenever the learner is refused, after it tells both shards what it knows,
    an insert somewhere is allowed."""
    rng = np.random.default_rng(0)
    ratio, min_env_steps, slack = 0.5, 64, 16
    shards = [ShardLimiter(ratio, min_env_steps, slack) for _ in range(2)]
    learner = RateLimiter(ratio, min_env_steps, slack)
    known = [0, 0]            # the learner's view of each shard's env steps
    updates = 0

    def tell_shards() -> None:   # a draw or a poll: the learner's word, the shards' answers
        for k, shard in enumerate(shards):
            shard.synced(updates, sum(known) - known[k])
            known[k] = shard.own_env_steps

    for _ in range(30_000):
        if rng.random() < rng.choice([0.2, 0.8]):
            k, n = int(rng.integers(2)), int(rng.integers(1, 100))
            if shards[k].can_insert(n):
                shards[k].inserted(n)
            continue
        learner.env_steps, learner.updates = sum(known), updates
        batches = int(rng.integers(1, 8))
        if learner.can_sample(batches):
            updates += batches
            tell_shards()
        else:
            tell_shards()
            learner.env_steps = sum(known)
            assert learner.can_sample(batches) or any(s.can_insert(1) for s in shards), "deadlock"
    true_env_steps = sum(s.own_env_steps for s in shards)
    owed = ReplayRatio(ratio, min_env_steps).entitled(true_env_steps)
    assert updates > 5_000
    assert abs(updates - owed) <= slack + 8 + 2 * 100 * ratio, (updates, owed)


def test_a_shard_keeps_its_own_inserts_in_its_state_and_takes_the_rest_from_the_learners():
    shard = ShardLimiter(0.25, 0, 8)
    shard.inserted(40)
    shard.synced(updates=3, elsewhere_env_steps=100)
    shard.synced(updates=2, elsewhere_env_steps=50)      # an older word changes nothing
    assert (shard.env_steps, shard.updates, shard.inserted_env_steps) == (140, 3, 40)
    restored = ShardLimiter(0.25, 0, 8)
    restored.load_state_dict(shard.state_dict())
    assert (restored.env_steps, restored.updates) == (40, 3)


# ---- pre-flight placement (runtime/placement.py) ----


def test_placement_on_paper_names_what_does_not_fit():
    nodes = [Node("a", 4.0, 0.0), Node("b", 2.0, 0.0)]
    fits = [Demand("learner", 1.0), Demand("learner1", 1.0), Demand("replay shard", 1.0, node="a"),
            Demand("replay shard 1", 1.0, node="b")] + [Demand(f"actor{i}", 0.5) for i in range(4)]
    assert first_unplaced(nodes, fits) is None
    # a group that must share a node fits the totals, not any one node
    together = [Demand(f"learner{r}", 2.5, group="the learners (shm)") for r in range(2)]
    missing, _ = first_unplaced(nodes, together)
    assert missing.name == "the learners (shm)" and missing.cpus == 5.0
    # pinned to a node that is full once its shard is there
    with pytest.raises(ClusterError, match=r"replay shard 1 needs 2 CPUs and 0 GPUs on node b.*at most 0 CPUs"):
        require_placement([Demand("replay shard", 2.0, node="b"), Demand("replay shard 1", 2.0, node="b")],
                          "apex", nodes)
    with pytest.raises(ClusterError, match=r"learner needs 1 CPUs and 1 GPUs on any one node"):
        require_placement([Demand("learner", 1.0, 1.0)], "apex", nodes)


def test_each_learner_on_a_node_takes_a_block_of_its_own_or_none_does():
    cpus = set(range(8))
    assert last_blocks(cpus, 2, 0, 3) == ([6, 7], {0, 1})
    assert last_blocks(cpus, 2, 1, 3) == ([4, 5], {0, 1})
    assert last_blocks(cpus, 2, 2, 3) == ([2, 3], {0, 1})
    assert last_blocks(cpus, 2, 0, 4) is None            # nothing left for the rest
    assert last_blocks({0, 1}, 1, 0, 1) == ([1], {0})    # one learner on 2 cores: as before


# ---- through the CLI, on the session's cluster ----

SCALED = ["--set", "log.progress=false", "--set", "apex.replay_host=process", "--set", "apex.actor_cpus=0.5",
          "--set", "apex.num_actors=2", "--set", "log.interval_env_steps=1000"]


def train(run_dir: Path, address: str, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return run_cli(["train", "cartpole-apex", "--run-dir", str(run_dir), "--address", address, *SCALED, *args],
                   timeout=timeout, env=ray_env())


def shm_segments() -> set[Path]:
    return set(Path("/dev/shm").glob("distdqn-*"))


def test_two_learners_over_two_shards_stay_identical_and_learn(tmp_path, ray_cluster):
    """2 learners x 2 shards, over 1,000 updates: the learners' replicas hash the same, each actor
    inserts into a shard (one each), both shards fill, the replay ratio holds over both, and
    nothing is left in /dev/shm."""
    run_dir = tmp_path / "run"
    before = shm_segments()   # (other runs on this machine may hold theirs)
    done = train(run_dir, ray_cluster, "--seed", "0", "--set", "apex.num_learners=2",
                 "--set", "apex.replay_shards=2", "--set", "train.total_env_steps=6000")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["learner_updates"] >= 1000, summary["learner_updates"]
    assert len(summary["learner_hashes"]) == 2 and summary["learners_identical"], summary["learner_hashes"]
    assert (summary["num_learners"], summary["replay_shards"]) == (2, 2)
    processes = json.loads((run_dir / "processes.json").read_text())
    assert {"learner", "learner1", "replay", "replay1"} <= set(processes)
    assert sorted(processes[f"actor{i}"]["shard"] for i in range(2)) == [0, 1]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r.get("replay_size")][-1]
    # updates per env step over both shards: the preset's replay ratio 0.5 after 500 env steps, within
    # the slack (256 updates), two groups of 16 batches, and each actor's insert in flight (64 env steps)
    owed = 0.5 * (last["inserted_env_steps"] - 500)
    assert abs(last["sampled_batches"] - owed) <= 256 + 2 * 16 + 2 * 64 * 0.5, (last["sampled_batches"], owed)
    assert last["learner_exchange_s"] > 0
    assert not shm_segments() - before


def test_every_learners_priorities_reach_the_shard_they_came_from(ray_cluster):
    """2 shards filled with equal priorities, 2 learners in a group, 32 updates of 64 (32 from
    each learner): the shards' changed priorities are about the draws of both learners, more than
    one learner's draws could change (tests/group_driver.py)."""
    result = subprocess.run([sys.executable, "-m", "tests.group_driver", ray_cluster], check=False, cwd=REPO,
                            env=ray_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    changed, draws_per_learner, hashes = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(c > 0 for c in changed), changed
    assert sum(changed) > 1.3 * draws_per_learner, (changed, draws_per_learner)
    assert len(set(hashes)) == 1


def test_a_shard_answers_the_learners_while_every_actors_insert_waits_for_them(ray_cluster):
    """16 actors' inserts held by a shard's rate limiter (each up to SAMPLE_WAIT_S) take every
    insert thread; the learners' sync is answered at once on threads of its own (behind them, it
    would wait SAMPLE_WAIT_S, the learners could not draw, and the run would stall: 2 learners x
    1 shard at 16 actors did, "the replay refused inserts for 120 s")."""
    result = subprocess.run([sys.executable, "-m", "tests.group_driver", ray_cluster, "crowded"], check=False,
                            cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    took, accepted, sent = json.loads(result.stdout.strip().splitlines()[-1])
    assert accepted == 0 and sent > 16, (accepted, sent)   # they were all held, then refused
    assert took < 1.5, took


def test_shards_are_checkpointed_and_another_count_is_refused_another_learner_count_resumed(tmp_path, ray_cluster):
    run_dir = tmp_path / "run"
    first = train(run_dir, ray_cluster, "--seed", "2", "--set", "apex.replay_shards=2",
                  "--set", "train.total_env_steps=3000")
    assert first.returncode == 0, first.stderr[-3000:]
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    assert (latest / "replay_shards.pt").is_file() and not (latest / "replay.pt").exists()
    before = json.loads((run_dir / "summary.json").read_text())

    refused = run_cli(["train", "--resume", str(run_dir), "--address", ray_cluster,
                       "--set", "apex.replay_shards=1", "--set", "train.total_env_steps=6000"],
                      timeout=300, env=ray_env())
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "apex.replay_shards" in errors[0] and "2 replay shard" in errors[0], refused.stderr
    assert json.loads((run_dir / "summary.json").read_text()) == before   # nothing overwritten

    resumed = run_cli(["train", "--resume", str(run_dir), "--address", ray_cluster,
                       "--set", "apex.num_learners=2", "--set", "train.total_env_steps=6000"],
                      timeout=400, env=ray_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["env_steps"] >= 6000 and after["learner_updates"] > before["learner_updates"]
    assert after["learners_identical"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumed_rows = [r for r in rows if r["env_steps"] > before["env_steps"] and r.get("replay_size")]
    assert resumed_rows and resumed_rows[0]["replay_size"] >= before["env_steps"] * 0.9   # both shards back


def test_a_run_that_cannot_be_placed_is_refused_in_one_line_at_once(tmp_path, ray_cluster):
    run_dir = tmp_path / "run"
    done = train(run_dir, ray_cluster, "--set", "apex.num_learners=4", "--set", "apex.learner_cpus=1.5",
                 timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "learners 4 x 1.5" in errors[0] and "the cluster has" in errors[0], done.stderr
    assert not run_dir.exists() or not (run_dir / "metrics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("role", ["learner1", "replay1"])
def test_a_lost_learner_or_shard_ends_the_run_in_one_line(tmp_path, ray_cluster, role):
    run_dir = tmp_path / "run"
    before = shm_segments()
    args = ["cartpole-apex", "--seed", "5", "--run-dir", str(run_dir), "--address", ray_cluster, *SCALED,
            "--set", "apex.num_learners=2", "--set", "apex.replay_shards=2",
            "--set", "checkpoint.interval_env_steps=2000"]
    returncode, err, _ = kill_role_mid_run(
        args, role, lambda: (run_dir / "checkpoints" / "latest").is_file(), wait_s=180, finish_s=300)
    assert returncode == 2, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and role in errors[0] and "checkpoint is intact" in errors[0], err[-2000:]
    assert not shm_segments() - before


# ---- the leader's word to its group (runtime/learner_group.py: Agreement), without Ray ----


def _agreeing_member(spec, rank: int, flags: list[bool], out) -> None:
    import torch

    from distdqn.runtime.group import Averager
    from distdqn.runtime.learner_group import Agreement

    listener = None
    if rank == 0 and spec.backend != "shm":
        import socket
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((spec.address, spec.port))
        listener.listen(16)
    if spec.backend == "shm" and rank > 0:   # rank 0 makes the segments (form_group joins it first)
        import time
        while not Path(f"/dev/shm/{spec.segment}-agree").exists():
            time.sleep(0.01)
    averager = Averager(spec, rank, 4, torch.device("cpu"), listener)   # as join_group: the Averager first
    agreement = Agreement(spec, rank)
    heard = [agreement.agree(flag if rank == 0 else not flag) for flag in flags]   # the others say the opposite
    agreement.close()
    averager.close()
    out.put((rank, heard))


@pytest.mark.parametrize("backend, host_of", [("shm", (0, 0, 0)), ("hierarchical", (0, 0, 1)), ("gloo", (0, 0, 1))])
def test_every_learner_hears_the_leaders_word_whatever_the_backend(backend, host_of):
    """Rank 0's flag reaches every member, whatever the others pass, in shared memory, across
    hosts (here segments of one machine, gloo on the loopback) or on a flat gloo group."""
    import multiprocessing as mp
    import uuid

    from distdqn.local.rendezvous import LOOPBACK, listen
    from distdqn.runtime.group import GroupSpec
    from distdqn.runtime.learner_group import remove

    probe = listen(LOOPBACK)
    port = probe.getsockname()[1]
    probe.close()   # rank 0 binds it again in its own process
    spec = GroupSpec(backend, len(host_of), 30.0, host_of, segment=f"distdqn-test-{uuid.uuid4().hex[:12]}",
                     address=LOOPBACK, port=port)
    flags = [bool(b) for b in np.random.default_rng(4).integers(0, 2, 40)]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    members = [ctx.Process(target=_agreeing_member, args=(spec, r, flags, out)) for r in range(len(host_of))]
    try:
        for p in members:
            p.start()
        heard = dict(out.get(timeout=120) for _ in members)
    finally:
        for p in members:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        remove(spec)
    assert all(heard[r] == flags for r in range(len(host_of))), heard
    assert not list(Path("/dev/shm").glob(f"{spec.segment}*"))
