"""Faults under load: a run on Acrobot-v1 while a random actor (apex), worker (async_ps) or client
(federated) is SIGKILLed every few seconds; does it finish, solve, count its restarts, lose no
more data than was in flight, and leave no process behind?

    python -m benchmarks.faults --topology apex --minutes 10 --kill-every 30 [--seed 0] [--set k=v ...]

The run is `distdqn train` in a subprocess that starts its own local Ray instance, with 4 actors,
workers or clients and a wall-clock budget (``train.max_wall_s``: it stops at the first evaluation
past it). Every ``--kill-every`` seconds this script reads the run's processes.json and SIGKILLs
one of the role's processes, chosen by a seeded RNG (a process restarting, not yet in the file, is
not chosen). Ray's processes on the machine (``ray::`` workers, raylet, gcs_server, ...) are counted
before and after; every process descended from the run is remembered while it runs, and any still
alive 30 s after it ended is reported as left behind. Nothing else is touched (no `ray stop`).

apex's inserts are counted in env steps on both sides: the actors report the env steps they sent
and those whose insert the replay acknowledged (``accepted_env_steps``); a killed actor's sent and
unacknowledged env steps (its insert in flight) are ``unacknowledged_at_kills_env_steps``, the
living actors' at the end ``unacknowledged_at_end_env_steps``; the replay counts what it inserted.
"inserted - acknowledged" is then the part of the in-flight inserts the replay took although no
actor reported it: at least 0, and at most what was in flight plus what killed (or stopped)
actors collected after their last report, which nobody counts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, header
from distdqn.config import Config, load_config
from distdqn.metrics import read_metrics
from distdqn.runtime.roles.experience_actor import blocks_per_insert

NUM_PROCESSES = 4        # actors, workers or clients
LEFT_BEHIND_WAIT_S = 30.0
RAY_MARKERS = ("ray::", "raylet", "gcs_server", "ray/_private/", "ray/dashboard/", "ray/autoscaler/",
               "default_worker.py")

# per topology: the preset, its overrides, and the role whose processes are killed (processes.json)
SETUPS = {
    "apex": ("acrobot-apex", [f"apex.num_actors={NUM_PROCESSES}",
                              "replay.beta_anneal_env_steps=100000"], "actor"),   # the preset's budget
    "async_ps": ("acrobot", ["topology=async_ps", f"workers.num_workers={NUM_PROCESSES}"], "worker"),
    # cartpole-federated's server settings (FedAvgM: benchmarks/RESULTS.md, federated quality)
    "federated": ("acrobot", ["topology=federated", f"workers.num_workers={NUM_PROCESSES}",
                              "federated.local_steps=25", "federated.server_optimizer=fedavgm",
                              "federated.server_beta1=0.5"], "worker"),
}


# ---- processes, from /proc ----

def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time in clock ticks, command line) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) "
        out[int(entry.name)] = (int(fields[1]), int(fields[19]), cmdline)
    return out


def is_ray(cmdline: str) -> bool:
    return any(marker in cmdline for marker in RAY_MARKERS)


def count_ray() -> int:
    return sum(is_ray(cmd) for _, _, cmd in processes().values())


def descendants(root: int, table: dict[int, tuple[int, int, str]]) -> dict[tuple[int, int], str]:
    """(pid, start time) -> command line of ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = {}, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            found[(pid, table[pid][1])] = table[pid][2]
            stack += children.get(pid, [])
    return found


def still_alive(seen: dict[tuple[int, int], str]) -> dict[tuple[int, int], str]:
    table = processes()
    return {key: cmd for key, cmd in seen.items() if key[0] in table and table[key[0]][1] == key[1]}


# ---- the run ----

def train_command(topology: str, run_dir: Path, seed: int, minutes: float, overrides: list[str]) -> list[str]:
    preset, sets, _ = SETUPS[topology]
    sets = [*sets, "train.total_env_steps=1000000000", f"train.max_wall_s={minutes * 60:g}",
            "log.progress=false", *overrides]
    return [sys.executable, "-m", "distdqn.cli", "train", preset, "--run-dir", str(run_dir), "--seed", str(seed),
            *itertools.chain.from_iterable(("--set", s) for s in sets)]


def kill_one(run_dir: Path, role: str, rng: random.Random, killed_pids: set[int]) -> tuple[str, int] | None:
    """SIGKILL a random process of ``role`` named in processes.json (re-read: restarted processes
    have new pids); None if none is up yet."""
    try:
        named = json.loads((run_dir / "processes.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    candidates = sorted(name for name, p in named.items()
                        if name.removeprefix(role).isdigit() and p and p["pid"] not in killed_pids)
    if not candidates:
        return None
    name = rng.choice(candidates)
    pid = named[name]["pid"]
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    killed_pids.add(pid)
    return name, pid


def last_env_steps(run_dir: Path) -> int | None:
    try:
        rows = read_metrics(run_dir)
    except (OSError, json.JSONDecodeError):
        return None
    return rows[-1]["env_steps"] if rows else None


def run(topology: str, run_dir: Path, seed: int, minutes: float, kill_every: float,
        overrides: list[str]) -> dict:
    role = SETUPS[topology][2]
    rng, killed_pids, kills, seen = random.Random(seed), set(), [], {}
    ray_before = count_ray()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        proc = subprocess.Popen(train_command(topology, run_dir, seed, minutes, overrides), cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        start = time.monotonic()
        next_kill, deadline = start + kill_every, start + minutes * 60 + 600
        while proc.poll() is None:
            seen.update(descendants(proc.pid, processes()))
            now = time.monotonic()
            if now >= next_kill:
                done = kill_one(run_dir, role, rng, killed_pids)
                if done is not None:
                    kills.append({"t_s": now - start, "role": done[0], "pid": done[1],
                                  "env_steps": last_env_steps(run_dir)})
                    next_kill += kill_every
            if now > deadline:   # hung: end our own run (its process group), nothing else
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.5)
    wall_s = time.monotonic() - start
    left = still_alive(seen)
    waited = time.monotonic()
    while left and time.monotonic() - waited < LEFT_BEHIND_WAIT_S:
        time.sleep(1.0)
        left = still_alive(seen)
    summary_path = run_dir / "summary.json"
    return {"returncode": proc.returncode, "wall_s": wall_s, "kills": kills, "seen": len(seen),
            "left_behind": sorted(f"{pid}: {cmd[:80]}" for (pid, _), cmd in left.items()),
            "ray_before": ray_before, "ray_after": count_ray(),
            "summary": json.loads(summary_path.read_text()) if summary_path.is_file() else None,
            "config": load_config(str(run_dir / "config.yaml")) if (run_dir / "config.yaml").is_file() else None,
            "rows": read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else [],
            "log_tail": Path(run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:]}


# ---- the report ----

def unreported_bound(cfg: Config, kills: int) -> int:
    """The most env steps apex's actors can send without reporting them: a killed actor's running
    call, and at the end every actor's calls in flight (queued calls run until the actors stop)."""
    a = cfg.apex
    per_call = max(a.blocks_per_call, blocks_per_insert(cfg)) * cfg.train.steps_per_collect * cfg.env.num_envs
    return (kills + a.num_actors * a.calls_in_flight) * per_call


def report(args: argparse.Namespace, role: str, r: dict) -> None:
    s, rows = r["summary"], r["rows"]
    print(header(f"Faults under load: {args.topology} on Acrobot-v1, {NUM_PROCESSES} {role}s, "
                 f"one SIGKILLed every {args.kill_every:g} s for {args.minutes:g} min"))
    if s is None:
        print(f"The run did not finish (exit code {r['returncode']}); its log ends:\n\n```\n{r['log_tail']}\n```")
    gaps = [b["wall_s"] - a["wall_s"] for a, b in itertools.pairwise(rows)]
    solved = f"yes, at {s['time_to_solve_s']:.0f} s" if s and s["solved"] else "no"
    print("| finished (exit code) | solved | final eval | kills | restarts counted | env steps | env steps/s | "
          "longest gap between metrics rows (s) | Ray processes before / after | run's processes left behind |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {'yes' if r['returncode'] == 0 else 'no'} ({r['returncode']}) | {solved} | "
          + (f"{s['final_eval_return_mean']:.1f} | " if s else "- | ")
          + f"{len(r['kills'])} | " + (f"{s[f'{role}_restarts']} | {s['env_steps']:,} | "
                                       f"{s['env_steps'] / s['wall_s']:.0f} | " if s else "- | - | - | ")
          + f"{max(gaps, default=float('nan')):.1f} | {r['ray_before']} / {r['ray_after']} | "
          f"{len(r['left_behind'])} of {r['seen']} |")
    if s and args.topology == "apex":
        inserted, accepted = s["replay_inserted_env_steps"], s["accepted_env_steps"]
        at_kills, at_end = s["unacknowledged_at_kills_env_steps"], s["unacknowledged_at_end_env_steps"]
        print("\n| env steps sent (counted) | acknowledged inserts | in flight at kills | in flight at the end | "
              "replay inserts | inserts - acknowledged |")
        print("|---|---|---|---|---|---|")
        unreported = unreported_bound(r["config"], len(r["kills"]))
        print(f"| {s['env_steps']:,} | {accepted:,} | {at_kills:,} | {at_end:,} | {inserted:,} | "
              f"{inserted - accepted:,} |")
        sums = accepted + at_kills + at_end == s["env_steps"]
        within = 0 <= inserted - accepted <= at_kills + at_end + unreported
        print(f"\nsent = acknowledged + in flight: {'holds' if sums else 'FAILS'}. inserts - acknowledged "
              f"(inserts the replay took that no report acknowledged) in [0, in flight + at most "
              f"{unreported:,} collected after the last reports (one call per kill, "
              f"apex.calls_in_flight calls per actor at the end)]: {'holds' if within else 'FAILS'}")
    print(f"\nrun wall {r['wall_s']:.0f} s (driver included); kills (s: role, env steps at the last "
          f"metrics row): " + ", ".join(f"{k['t_s']:.0f}: {k['role']} {k['env_steps']}" for k in r["kills"]))
    for line in r["left_behind"]:
        print(f"- left behind: `{line}`")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topology", choices=sorted(SETUPS), default="apex")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directory here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "run"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        r = run(args.topology, run_dir, args.seed, args.minutes, args.kill_every, args.overrides)
    report(args, SETUPS[args.topology][2], r)


if __name__ == "__main__":
    main()
