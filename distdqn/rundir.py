"""A run directory has one writer at a time, and ``--overwrite`` deletes only distdqn runs.

The writer holds ``distdqn.lock`` in the run directory: an exclusive ``flock`` on it (the kernel
lets it go when the process dies, however it dies) and, inside, the writer's pid, host and start
time, for the message that refuses a second writer. A lock file left by a writer that died is
simply taken over. Two ``--resume`` of one run, or a ``--resume`` of a run still training, are
refused in one line before anything is written.

``--overwrite`` replaces a directory only if it looks like a distdqn run: a ``config.yaml`` and
nothing but what a run writes (``RUN_FILES``); anything else is refused, and nothing deleted.

``writing`` is what ``distdqn train`` holds while a run trains: the lock, the stop signals
(``signals.py``) and, when resuming, the checkpoint's components, read only once this process is
the run's one writer (temporaries a writer that died left swept, the spaces checked first).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from distdqn import signals
from distdqn.checkpoint import Checkpoint, sweep_temporaries
from distdqn.errors import RunDirectoryError

LOCK = "distdqn.lock"
RUN_FILES = frozenset({"config.yaml", "metrics.jsonl", "summary.json", "processes.json", "run.log",
                       "tensorboard", "checkpoints", LOCK, ".summary.json.tmp", ".processes.json.tmp",
                       "export", "wandb", "wandb-id"})   # export: distdqn export; wandb: log.wandb
"""What a run writes into its directory (and nothing else)."""


class RunLock:
    """The run directory's one-writer lock (see the module docstring); a context manager."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise RunDirectoryError naming the writer that holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirectoryError(f"{self.run_dir} is in use by another distdqn run ({holder}); "
                                        f"wait for it to end, or stop it first") from None
            # the file may have been removed (its writer ended) between our open and our lock
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def refuse_if_in_use(run_dir: Path) -> None:
    """A RunDirectoryError if another writer holds ``run_dir``'s lock (checked before a resume
    reads anything, so that the message is about the writer, not about what it has not saved yet)."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirectoryError(f"{run_dir} is in use by another distdqn run ({_read_holder(fd)}); "
                                f"wait for it to end, or stop it first") from None
    finally:
        os.close(fd)   # closing lets our own flock go


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {holder['pid']} on {holder['host']}, since {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its writer did not say who it is"


def run_dir_of(path: Path) -> Path:
    """The run directory of what ``--resume`` names: a run directory, its ``checkpoints/``
    folder, or one checkpoint in it."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path.parent.parent
    if path.name == "checkpoints" and not (path / "checkpoints").is_dir():
        return path.parent
    return path


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a distdqn run: a config.yaml, and nothing a run does not write."""
    names = {p.name for p in Path(path).iterdir()}
    return "config.yaml" in names and names <= RUN_FILES


@contextlib.contextmanager
def new_run_dir(run_dir: Path, overwrite: bool) -> Iterator[RunLock]:
    """The directory of a new run, locked while inside: created, or (``overwrite``) an existing
    distdqn run emptied under its lock (a run still writing there is refused, as is a directory
    that is not a run). An empty existing directory is used as it is."""
    run_dir = Path(run_dir)
    existing = run_dir.exists() and any(run_dir.iterdir())
    if existing and not overwrite:
        raise RunDirectoryError(f"--run-dir: {run_dir} already exists; pass --overwrite to replace it "
                                f"or --resume {run_dir} to continue it")
    if existing and not is_run_dir(run_dir):
        strange = sorted({p.name for p in run_dir.iterdir()} - RUN_FILES) or ["no config.yaml"]
        raise RunDirectoryError(f"--overwrite: {run_dir} is not a distdqn run (it holds "
                                f"{', '.join(strange[:3])}{', ...' if len(strange) > 3 else ''}); "
                                f"nothing was deleted")
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir) as lock:
        for entry in run_dir.iterdir() if existing else []:
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        yield lock


@contextlib.contextmanager
def writing(run_dir: Path, overwrite: bool, resume: Checkpoint | None, info: Any) -> Iterator[dict[str, Any] | None]:
    """While inside, this process is ``run_dir``'s one writer (a new run's directory made or, with
    ``overwrite``, emptied; a resumed one locked) and SIGTERM / SIGINT stop the run at its next safe
    point; yields the components of ``resume`` (None for a new run), read once the lock is held:
    what a writer that died left is swept, the environment's spaces (``info``) checked, then
    every component loaded without unpickling code."""
    with RunLock(run_dir) if resume is not None else new_run_dir(run_dir, overwrite), signals.stop_signals():
        if resume is None:
            yield None
            return
        sweep_temporaries(run_dir / "checkpoints")
        resume.check_spaces(info.obs_shape, info.obs_dtype, info.num_actions)
        yield resume.load_all()
