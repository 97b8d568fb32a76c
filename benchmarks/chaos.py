"""Chaos: what a killed driver, a kill in the middle of a checkpoint, a full disk, damaged or
malicious checkpoint files and a NaN-emitting environment do to a run of each topology, and what
they cost it.

    python -m benchmarks.chaos --topology single --out /tmp/chaos      # one topology's cases -> JSON
    python -m benchmarks.chaos --table /tmp/chaos                       # the Markdown table of all

Each run is `distdqn train` (CartPole-v1, the topology's preset) in a subprocess of its own
session, starting its own local Ray instance; periodic checkpoints every ``--interval-s`` seconds
of wall clock (``checkpoint.interval_s``, 300 by default: 2 here, so that a case takes seconds).

- kill-driver: SIGKILL of the driver once a periodic checkpoint exists. Every process descended
  from it (remembered while it ran) must be gone within 30 s, no ``/dev/shm/distdqn-*`` segment
  of it left; then ``--resume`` must go on from the checkpoint. Lost: the env steps logged past
  the checkpoint, and the seconds since it was written.
- kill-in-save: SIGKILL the moment a checkpoint's temporary directory appears
  (``checkpoint.interval_env_steps=500``); the previous checkpoint must verify and resume, the
  temporary be swept.
- disk-full: the run directory on a 20 MB tmpfs, periodic checkpoints kept (``keep=1000``) until
  the disk fills: a failed periodic save is one line and the run goes on; the final one fails in
  one line (exit 2); the previous checkpoint verifies.
- corrupt / truncated / empty: one byte flipped, half cut, or nothing left of the final
  checkpoint's largest component; ``--resume`` must pass over it to the newest that verifies.
- malicious: the final checkpoint's learner.pt replaced by a pickle whose ``__reduce__`` touches a
  file, the manifest rewritten to vouch for it; ``evaluate`` and ``--resume`` must refuse it in
  one line and the file must never appear.
- nan-env: CartPole with ``force_mag: 1e308`` (its state overflows to inf at once); with
  ``env.non_finite=error`` one line naming the env, with ``skip`` the run finishes and counts them.

Nothing is left behind: the tmpfs is unmounted, leftover processes of a case are killed (and
reported), run directories removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, header
from benchmarks.faults import descendants, processes, still_alive

PRESETS = {"single": "cartpole", "apex": "cartpole-apex", "sync_ps": "cartpole-sync_ps",
           "async_ps": "cartpole-async_ps", "allreduce": "cartpole-allreduce", "federated": "cartpole-federated"}
CASES = ("kill-driver", "corrupt", "truncated", "empty", "malicious", "kill-in-save", "disk-full",
         "nan-error", "nan-skip")
QUIET = ["log.progress=false", "log.interval_env_steps=500", "train.torch_threads=1"]
HUGE_FORCE = "env.attributes={force_mag: 1.0e+308}"


def sets(*assignments: str) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


def cli(args: list[str], timeout_s: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run([sys.executable, "-m", "distdqn.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def start(args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.Popen([sys.executable, "-m", "distdqn.cli", "train", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def shm_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("distdqn-")}


def rows_env_steps(run_dir: Path) -> list[int]:
    from distdqn.metrics import read_metrics
    try:
        return [r["env_steps"] for r in read_metrics(run_dir)]
    except (OSError, ValueError):
        return []


def checkpoint_of(run_dir: Path) -> tuple[str, int, float] | None:
    """(name, env steps, created) of the run's newest checkpoint that verifies, or None."""
    from distdqn.checkpoint import open_checkpoint
    from distdqn.errors import CheckpointError
    try:
        ckpt = open_checkpoint(run_dir)
    except CheckpointError:
        return None
    return ckpt.path.name, ckpt.env_steps, float(ckpt.manifest["created"])


def kill_and_watch(proc: subprocess.Popen, seen: dict) -> tuple[int, list[str]]:
    """SIGKILL the driver; the processes descended from it still alive after 30 s (then killed)."""
    seen.update(descendants(proc.pid, processes()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and still_alive(seen):
        time.sleep(0.5)
    left = still_alive(seen)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left), sorted(cmd[:80] for cmd in left.values())


def wait_for(predicate, proc: subprocess.Popen, seen: dict, timeout_s: float, poll_s: float = 0.2) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        seen.update(descendants(proc.pid, processes()))
        if predicate():
            return True
        time.sleep(poll_s)
    return False


def resume(run_dir: Path, extra_env_steps: int) -> dict:
    ckpt = checkpoint_of(run_dir)
    total = (ckpt[1] if ckpt else 0) + extra_env_steps
    result = cli(["train", "--resume", str(run_dir), *sets(f"train.total_env_steps={total}")])
    steps = rows_env_steps(run_dir)
    return {"rc": result.returncode, "errors": error_lines(result.stderr), "from": ckpt,
            "passed_over": [line for line in result.stderr.splitlines() if "passed over" in line],
            "monotonic": steps == sorted(steps), "tail": result.stderr[-600:] if result.returncode else ""}


# ---- the cases ----

def kill_driver(topology: str, work: Path, interval_s: float) -> dict:
    run_dir = work / "run"
    shm = shm_segments()
    proc = start([PRESETS[topology], "--run-dir", str(run_dir),
                  *sets(*QUIET, "train.total_env_steps=1000000000", f"checkpoint.interval_s={interval_s}")])
    seen: dict = {}
    ready = wait_for(lambda: checkpoint_of(run_dir) is not None, proc, seen, 180)
    if ready:
        wait_for(lambda: False, proc, seen, interval_s * 0.75)   # then kill between two checkpoints
    killed_at, logged = time.time(), max(rows_env_steps(run_dir), default=0)
    ckpt = checkpoint_of(run_dir)
    left, which = kill_and_watch(proc, seen)
    segments = sorted(shm_segments() - shm)
    for name in segments:   # reported, then removed
        Path("/dev/shm", name).unlink(missing_ok=True)
    out = {"case": "kill-driver", "ready": ready, "checkpoint": ckpt, "logged_env_steps": logged,
           "lost_env_steps": logged - ckpt[1] if ckpt else None,
           "lost_s": killed_at - ckpt[2] if ckpt else None, "processes_left": left, "left": which,
           "segments_left": segments, "interval_s": interval_s}
    out["resume"] = resume(run_dir, 1500)
    return out


def damaged(run_dir: Path, work: Path, damage: str) -> dict:
    copy = work / f"run-{damage}"
    shutil.copytree(run_dir, copy)
    final = copy / "checkpoints" / "final"
    target = max((p for p in final.glob("*.pt")), key=lambda p: p.stat().st_size)
    data = target.read_bytes()
    target.write_bytes({"corrupt": data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:],
                        "truncated": data[:len(data) // 2], "empty": b""}[damage])
    before = checkpoint_of(run_dir)
    out = {"case": damage, "component": target.name, "final_env_steps": before[1] if before else None,
           "resume": resume(copy, 1000)}
    used = out["resume"]["from"]
    out["lost_env_steps"] = before[1] - used[1] if before and used else None
    shutil.rmtree(copy, ignore_errors=True)
    return out


def malicious(run_dir: Path, work: Path) -> dict:
    import torch
    copy, marker = work / "run-malicious", work / "pwned"
    shutil.copytree(run_dir, copy)
    final = copy / "checkpoints" / "final"
    torch.save({"online": Payload(marker)}, final / "learner.pt")
    manifest = json.loads((final / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (final / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (final / "manifest.json").write_text(json.dumps(manifest))
    evaluated = cli(["evaluate", str(copy)])
    resumed = cli(["train", "--resume", str(copy)])
    out = {"case": "malicious", "evaluate_rc": evaluated.returncode, "evaluate_errors": error_lines(evaluated.stderr),
           "resume_rc": resumed.returncode, "resume_errors": error_lines(resumed.stderr), "payload_ran": marker.exists()}
    shutil.rmtree(copy, ignore_errors=True)
    return out


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def kill_in_save(topology: str, work: Path) -> dict:
    run_dir = work / "run-save"
    checkpoints = run_dir / "checkpoints"
    proc = start([PRESETS[topology], "--run-dir", str(run_dir),
                  *sets(*QUIET, "train.total_env_steps=1000000000", "checkpoint.interval_env_steps=500",
                        "checkpoint.interval_s=null")])
    seen: dict = {}
    wait_for(lambda: checkpoint_of(run_dir) is not None, proc, seen, 180)
    before = checkpoint_of(run_dir)

    def writing() -> bool:
        try:
            return any(p.name.startswith(".tmp-") for p in os.scandir(checkpoints))
        except OSError:
            return False
    hit = wait_for(writing, proc, seen, 60, poll_s=0.0005)
    logged = max(rows_env_steps(run_dir), default=0)
    left, which = kill_and_watch(proc, seen)
    mid_write = writing()
    after = checkpoint_of(run_dir)
    out = {"case": "kill-in-save", "caught_writing": hit, "temporary_left": mid_write, "previous": before,
           "verifies": after, "processes_left": left, "left": which,
           "lost_env_steps": logged - after[1] if after else None}
    out["resume"] = resume(run_dir, 1000)
    out["swept"] = not writing()
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def disk_full(topology: str, work: Path) -> dict:
    mount = work / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if made.returncode != 0:
        return {"case": "disk-full", "skipped": made.stderr.strip()}
    try:
        run_dir = mount / "run"
        result = cli([
            "train", PRESETS[topology], "--run-dir", str(run_dir),
            *sets(*QUIET, "train.total_env_steps=1000000000", "train.max_wall_s=60",
                  "checkpoint.interval_env_steps=1000", "checkpoint.keep=1000", "checkpoint.interval_s=null")],
            timeout_s=240)
        notes = [line for line in result.stderr.splitlines() if "was not written" in line or "could not be written" in line]
        ckpt = checkpoint_of(run_dir)
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
        return {"case": "disk-full", "rc": result.returncode, "errors": error_lines(result.stderr),
                "tracebacks": result.stderr.count("Traceback"), "notes": len(notes),
                "first_note": notes[0][:200] if notes else None, "verifies": ckpt,
                "logged_env_steps": max(rows_env_steps(run_dir), default=0),
                "failed_checkpoints": summary.get("failed_checkpoints"), "summary_env_steps": summary.get("env_steps"),
                "leftover_temporaries": sorted(p.name for p in (run_dir / "checkpoints").iterdir()
                                               if p.name.startswith(".")) if (run_dir / "checkpoints").is_dir() else []}
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def nan_env(topology: str, work: Path, mode: str) -> dict:
    run_dir = work / f"run-nan-{mode}"
    result = cli(["train", PRESETS[topology], "--run-dir", str(run_dir),
                  *sets(*QUIET, HUGE_FORCE, f"env.non_finite={mode}", "train.total_env_steps=4000")])
    summary = run_dir / "summary.json"
    out = {"case": f"nan-{mode}", "rc": result.returncode, "errors": error_lines(result.stderr),
           "tracebacks": result.stderr.count("Traceback"),
           "non_finite_steps": json.loads(summary.read_text()).get("non_finite_steps") if summary.is_file() else None}
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def run_topology(topology: str, interval_s: float, cases: tuple[str, ...]) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="distdqn-chaos-") as tmp:
        work = Path(tmp)
        base = None
        for case in cases:
            started = time.perf_counter()
            if case == "kill-driver":
                result = kill_driver(topology, work, interval_s)
                base = work / "run"
            elif case in ("corrupt", "truncated", "empty", "malicious"):
                if base is None:
                    continue   # these damage the run kill-driver made (and resumed to its end)
                result = damaged(base, work, case) if case != "malicious" else malicious(base, work)
            elif case == "kill-in-save":
                result = kill_in_save(topology, work)
            elif case == "disk-full":
                result = disk_full(topology, work)
            else:
                result = nan_env(topology, work, case.removeprefix("nan-"))
            result.update(topology=topology, seconds=round(time.perf_counter() - started, 1))
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
    return results


# ---- the table ----

def _outcome(r: dict) -> tuple[str, str]:
    """(outcome, what was lost) of one case, in words."""
    case = r["case"]
    res = r.get("resume", {})
    resumed = (f"--resume from {res['from'][0]} rc {res['rc']}" if res.get("from") else "nothing to resume") if res else ""
    if case == "kill-driver":
        outcome = (f"{r['processes_left']} processes and {len(r['segments_left'])} segments left; {resumed}"
                   f"{'' if res.get('monotonic', True) else ', history NOT monotonic'}")
        lost = (f"{r['lost_env_steps']} env steps, {r['lost_s']:.1f} s (interval {r['interval_s']:g} s)"
                if r["checkpoint"] else "no checkpoint yet")
    elif case in ("corrupt", "truncated", "empty"):
        outcome = f"{r['component']} damaged: {'passed over; ' if res.get('passed_over') else ''}{resumed}"
        lost = f"{r['lost_env_steps']} env steps (final -> {res['from'][0]})" if res.get("from") else "the run"
    elif case == "malicious":
        outcome = (f"evaluate rc {r['evaluate_rc']}, resume rc {r['resume_rc']}, "
                   f"{len(r['evaluate_errors'])}+{len(r['resume_errors'])} error lines; payload "
                   f"{'RAN' if r['payload_ran'] else 'never ran'}")
        lost = "nothing (the tampered checkpoint is refused)"
    elif case == "kill-in-save":
        outcome = (f"killed {'mid-write' if r['temporary_left'] else 'outside a write'}; previous "
                   f"{r['verifies'][0] if r['verifies'] else 'NONE'} verifies; {resumed}; temporary "
                   f"{'swept' if r['swept'] else 'LEFT'}; {r['processes_left']} processes left")
        lost = f"{r['lost_env_steps']} env steps" if r["lost_env_steps"] is not None else "-"
    elif case == "disk-full":
        if "skipped" in r:
            return f"skipped ({r['skipped']})", "-"
        outcome = (f"rc {r['rc']}, {len(r['errors'])} error line, {r['tracebacks']} tracebacks; "
                   f"{r['failed_checkpoints']} saves failed ({r['notes']} lines said so), the run went on; "
                   f"{r['verifies'][0] if r['verifies'] else 'NO checkpoint'} verifies")
        lost = (f"the final checkpoint; {r['logged_env_steps'] - r['verifies'][1]} env steps past the last one"
                if r["verifies"] else "everything")
    else:
        outcome = (f"rc {r['rc']}, {len(r['errors'])} error line, {r['tracebacks']} tracebacks"
                   + (f"; {r['non_finite_steps']} steps skipped" if r["case"] == "nan-skip" else "")
                   + (f": `{r['errors'][0][:90]}`" if r["errors"] else ""))
        lost = "the run (by design)" if r["case"] == "nan-error" else "the non-finite transitions"
    return outcome, lost


def table(results: list[dict]) -> str:
    lines = ["| case | topology | outcome | what was lost |", "|---|---|---|---|"]
    order = {c: i for i, c in enumerate(CASES)}
    for r in sorted(results, key=lambda r: (order[r["case"]], list(PRESETS).index(r["topology"]))):
        outcome, lost = _outcome(r)
        lines.append(f"| {r['case']} | {r['topology']} | {outcome} | {lost} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", choices=list(PRESETS))
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--interval-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path, help="folder for <topology>.json")
    parser.add_argument("--table", type=Path, help="print the table of the JSON files in this folder")
    args = parser.parse_args()
    if args.table:
        results = [r for f in sorted(args.table.glob("*.json")) for r in json.loads(f.read_text())]
        print(header("Chaos: kills, a full disk, damaged and malicious checkpoints, a NaN env"))
        print(table(results))
        return
    results = run_topology(args.topology, args.interval_s, tuple(args.cases))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{args.topology}.json"
        previous = json.loads(path.read_text()) if path.is_file() else []
        kept = [r for r in previous if r["case"] not in {r["case"] for r in results}]
        path.write_text(json.dumps(kept + results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
