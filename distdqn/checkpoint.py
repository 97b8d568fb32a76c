"""Safe, verified, durable save and restore of named components.

A checkpoint is a directory ``checkpoints/<name>/`` holding one file per component
(``learner.pt``, ``replay.pt``, ...), the resolved ``config.yaml`` and a ``manifest.json``;
``checkpoints/latest`` names the newest.

Safe. A component holds only tensors, NumPy arrays of numbers or booleans, Python numbers,
strings, bytes and None, in lists, tuples, dicts and sets (``plain`` checks it when saving, and
again after loading). Components are read with ``torch.load(weights_only=True)`` and an
allow-list of the few NumPy globals an array's pickle names (``NUMPY_GLOBALS``), so a file that
names anything else (a function, a class with a ``__reduce__``) is refused before any of it runs.
No environment is ever unpickled: an env's state is data (``envs.env_state``).

Verified. The manifest records the format version, each file's size and sha256, the package
versions and the environment's spaces. It is read first, and every file is checked against it
before any is loaded; a resumed or evaluated run compares the spaces with its environment
(``Checkpoint.check_spaces``) before the components are read.

Durable. Every file, then the directory, is fsynced before the directory is renamed into place;
a checkpoint that replaces one of the same name (``final``) is swapped with it in one rename
(Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, and a reader that finds ``latest``
naming nothing in between falls back as below); ``latest`` is written to a temporary file,
fsynced and renamed. A failed save is one line (``CheckpointWriteError``, a full disk named as
such) and leaves nothing behind; temporaries of a writer that died are swept when a run starts
(``sweep_temporaries``). A reader uses the newest checkpoint that verifies: the one ``latest``
names, else the others, newest (most env steps) first.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdqn.errors import CheckpointError, CheckpointWriteError

FORMAT_VERSION = 3   # 3: safe components (tensors, arrays, plain values), checksums, spaces, env state as data
MANIFEST = "manifest.json"
LATEST = "latest"
BEST = "best"        # checkpoints/best: the network of the run's best evaluation (local/session.py)
TMP_PREFIX = ".tmp-"   # a checkpoint being written (or, after a swap, the old one being removed)

# What an array's pickle names (numpy 2: numpy._core): the reconstructor, the array and dtype
# types, and the dtype classes of numbers and booleans. Nothing that runs code of a file's choosing.
_DTYPE_CLASSES = ("BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType",
                  "UInt16DType", "UInt32DType", "UInt64DType", "Float16DType", "Float32DType",
                  "Float64DType", "LongDoubleDType", "Complex64DType", "Complex128DType",
                  "LongLongDType", "ULongLongDType", "IntDType", "UIntDType", "ByteDType", "UByteDType",
                  "ShortDType", "UShortDType", "LongDType", "ULongDType")
NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                 *dict.fromkeys(getattr(np.dtypes, n) for n in _DTYPE_CLASSES if hasattr(np.dtypes, n))]

_SCALARS = (bool, int, float, complex, str, bytes, type(None))
_ARRAY_KINDS = "biufc"   # bool, int, uint, float, complex: never object, string or structured arrays


# ---- what a component may hold ----

def plain(obj: Any, where: str = "") -> Any:
    """``obj`` as a checkpoint may hold it (NumPy scalars become Python numbers, a tensor is
    detached); a TypeError naming the path of anything else (``learner.optimizer[2]``)."""
    if isinstance(obj, torch.Tensor):
        if type(obj) not in (torch.Tensor, torch.nn.Parameter) or obj.layout != torch.strided:
            raise TypeError(f"{where}: a {type(obj).__name__} ({obj.layout}) is not a plain tensor")
        return obj.detach()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"{where}: an array of dtype {obj.dtype} (only numbers and booleans are saved)")
        return obj if type(obj) is np.ndarray else np.array(obj)
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"{where}: a NumPy {obj.dtype} scalar")
        return obj.item()
    if type(obj) in _SCALARS:
        return obj
    if type(obj) in (list, tuple):
        return type(obj)(plain(x, f"{where}[{i}]") for i, x in enumerate(obj))
    if type(obj) is set:
        return {plain(x, f"{where}{{}}") for x in obj}
    if type(obj) in (dict, OrderedDict):
        out = {}
        for key, value in obj.items():
            if type(key) not in (str, int, float, bool):
                raise TypeError(f"{where}: a dict key of type {type(key).__name__}")
            out[key] = plain(value, f"{where}.{key}" if where else str(key))
        return out
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be saved "
                    f"(checkpoints hold tensors, arrays and plain values only)")


# ---- durable writes ----

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, write: Any) -> dict[str, Any]:
    """Write ``path`` with ``write(file)``, fsync it; its size and sha256."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_text_durably(path: Path, text: str) -> None:
    """``path`` replaced by ``text`` in one rename, the file and its directory fsynced."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_file(tmp, lambda f: f.write(text.encode()))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap directories ``a`` and ``b`` in one rename (Linux renameat2); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _install(tmp: Path, final: Path) -> None:
    """Put the complete checkpoint ``tmp`` in place as ``final``; the old ``final`` is removed."""
    if not final.exists():
        os.rename(tmp, final)
    elif _exchange(tmp, final):      # final is the new one now, tmp the old one
        shutil.rmtree(tmp, ignore_errors=True)
    else:                            # two renames: in between, a reader falls back to another checkpoint
        old = final.with_name(f"{TMP_PREFIX}old-{final.name}-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)


def _why_not_written(exc: BaseException, where: Path) -> str:
    """A failed write in a few words: a full disk named as such."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)
    if not full:
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(where).free < 1 << 20
    if full:
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(where).free
            return f"disk full: {free / 2**20:.1f} MiB free on {where}'s filesystem"
        return "disk full"
    return text


def save_checkpoint(checkpoints_dir: Path, name: str, components: dict[str, Any], config_yaml: str,
                    info: dict[str, Any], latest: bool = True) -> Path:
    """Write ``components`` (tensors, arrays and plain values: ``plain``) as checkpoint ``name``
    and, with ``latest`` (not for ``best``, no point to resume from), make it ``latest``; returns
    its directory. ``info`` joins the manifest (env steps,
    topology, the environment's spaces). A failed write raises CheckpointWriteError and leaves
    nothing behind; a component of another type is a TypeError (a bug), raised before anything
    is written."""
    safe = {key: plain(obj, key) for key, obj in components.items()}
    final = checkpoints_dir / name
    tmp = checkpoints_dir / f"{TMP_PREFIX}{name}-{os.getpid()}"
    try:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files = {f"{key}.pt": _write_file(tmp / f"{key}.pt", lambda f, obj=obj: torch.save(obj, f))
                 for key, obj in safe.items()}
        files["config.yaml"] = _write_file(tmp / "config.yaml", lambda f: f.write(config_yaml.encode()))
        manifest = {"format_version": FORMAT_VERSION, "name": name, "created": time.time(),
                    "components": sorted(safe), "files": files, "packages": package_versions(), **info}
        _write_file(tmp / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        _fsync_dir(tmp)
        _install(tmp, final)
        if latest:
            write_text_durably(checkpoints_dir / LATEST, name + "\n")
    except (OSError, RuntimeError) as exc:   # torch.save reports a failed write as a RuntimeError
        why = _why_not_written(exc, checkpoints_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(f"checkpoint {name} was not written ({why}); "
                                   f"the previous checkpoint is intact") from None
    return final


def package_versions() -> dict[str, str]:
    import gymnasium

    import distdqn
    return {"distdqn": distdqn.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": np.__version__, "gymnasium": gymnasium.__version__}


def prune_checkpoints(checkpoints_dir: Path, prefix: str, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints whose names start with ``prefix``."""
    found = sorted(p for p in checkpoints_dir.glob(f"{prefix}*") if (p / MANIFEST).exists())
    for old in found[:-keep] if keep > 0 else found:
        shutil.rmtree(old, ignore_errors=True)


def sweep_temporaries(checkpoints_dir: Path) -> list[str]:
    """Remove what writers that died left behind (half-written checkpoints, old ones being
    removed, a half-written ``latest``); only the run's one writer calls this, at its start."""
    if not checkpoints_dir.is_dir():
        return []
    swept = [p for p in checkpoints_dir.iterdir() if p.name.startswith((TMP_PREFIX, f".{LATEST}.tmp-"))]
    for p in swept:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return sorted(p.name for p in swept)


# ---- reading: resolve, verify, load ----

class _FormatRefused(CheckpointError):
    """A checkpoint of another format: its run's older checkpoints are too, so no fallback."""


def _verify(ckpt: Path) -> dict[str, Any]:
    """The manifest of ``ckpt``, once every file it lists matches its size and sha256."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt}: corrupt checkpoint manifest ({str(exc).splitlines()[0]})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{ckpt}: corrupt checkpoint manifest (not a JSON object)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _FormatRefused(f"{ckpt}: checkpoint format {manifest.get('format_version')!r}, "
                             f"this distdqn reads {FORMAT_VERSION} (start a new run)")
    files, components = manifest.get("files"), manifest.get("components")
    if (not isinstance(files, dict) or not isinstance(components, list)
            or not {f"{c}.pt" for c in components} | {"config.yaml"} <= set(files)):
        raise CheckpointError(f"{ckpt}: corrupt checkpoint manifest (its file list is incomplete)")
    for name, entry in files.items():
        if not re.fullmatch(r"[\w.-]+", name) or name.startswith("."):
            raise CheckpointError(f"{ckpt}: corrupt checkpoint manifest (it names the file {name!r})")
        path = ckpt / name
        try:
            size = path.stat().st_size
        except OSError:
            raise CheckpointError(f"{ckpt}: {name} is missing") from None
        if size != entry.get("bytes"):
            raise CheckpointError(f"{ckpt}: {name} is truncated or corrupt ({size} bytes, "
                                  f"the manifest says {entry.get('bytes')})")
        if _sha256(path) != entry.get("sha256"):
            raise CheckpointError(f"{ckpt}: {name} is corrupt (its sha256 does not match the manifest)")
    return manifest


@dataclass
class Checkpoint:
    """A verified checkpoint: its directory, manifest and config text. ``skipped``: why newer
    checkpoints of the run were passed over (they did not verify)."""

    path: Path
    manifest: dict[str, Any]
    skipped: list[str] = field(default_factory=list)

    @property
    def config_yaml(self) -> str:
        return (self.path / "config.yaml").read_text()

    @property
    def env_steps(self) -> int:
        return int(self.manifest.get("env_steps", 0))

    def check_spaces(self, obs_shape: tuple[int, ...], obs_dtype: Any, num_actions: int) -> None:
        """The environment now has the spaces the checkpoint was trained on (a one-line error if not)."""
        saved = self.manifest.get("env", {})
        now = {"observation_shape": list(obs_shape), "observation_dtype": str(np.dtype(obs_dtype)),
               "num_actions": int(num_actions)}
        for key, value in now.items():
            if key in saved and saved[key] != value:
                raise CheckpointError(f"{self.path}: the checkpoint was trained on {key} {saved[key]}, "
                                      f"the environment now has {value}")

    def load(self, key: str) -> Any:
        """Component ``key``, read without unpickling code; a one-line CheckpointError if it holds
        anything but tensors, arrays and plain values."""
        if key not in self.manifest["components"]:
            raise CheckpointError(f"{self.path}: the checkpoint has no {key} component")
        path = self.path / f"{key}.pt"
        try:
            with torch.serialization.safe_globals(NUMPY_GLOBALS), warnings.catch_warnings():
                warnings.simplefilter("ignore")   # torch's notes on pickle protocols
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            named = re.search(r"GLOBAL (\S+)", str(exc))
            said = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
            what = (f"it names {named.group(1)}" if named else said.group(1).strip()[:200] if said
                    else str(exc).strip().splitlines()[0][:200])
            raise CheckpointError(f"{self.path}: {key}.pt holds more than tensors, arrays and plain values "
                                  f"({what}); refused, none of it was run") from None
        except Exception as exc:  # noqa: BLE001 - any other failure to read means a damaged file
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{self.path}: corrupt component {key}.pt ({first_line})") from None
        try:
            return plain(obj, key)
        except TypeError as exc:
            raise CheckpointError(f"{self.path}: {key}.pt holds {exc}; refused") from None

    def load_all(self) -> dict[str, Any]:
        return {key: self.load(key) for key in self.manifest["components"]}


def _candidates(base: Path) -> tuple[list[Path], list[str]]:
    """The checkpoints of ``base`` (a checkpoints/ folder) in the order a reader tries them: the
    one ``latest`` names, then the others, most env steps first; and what ``latest`` said wrong."""
    problems, first = [], []
    latest = base / LATEST
    if latest.is_file():
        named = base / latest.read_text().strip()
        if (named / MANIFEST).is_file():
            first = [named]
        else:
            problems.append(f"{base}: checkpoint {named.name!r} named by 'latest' is missing or incomplete")

    def newest_first(path: Path) -> tuple[int, float]:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            return int(manifest.get("env_steps", -1)), float(manifest.get("created", 0.0))
        except (OSError, ValueError, TypeError, AttributeError):
            return -1, 0.0
    others = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != BEST
              and (p / MANIFEST).is_file() and p not in first]   # best holds a network only: no resume
    return first + sorted(others, key=newest_first, reverse=True), problems


def open_checkpoint(path: Path) -> Checkpoint:
    """A run directory, its ``checkpoints/`` folder, or a checkpoint directory -> the newest
    checkpoint that verifies (a checkpoint directory named itself: that one, verified)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return Checkpoint(path, _verify(path))
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    base = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    candidates, latest_problems = _candidates(base)
    problems: list[str] = []
    for ckpt in candidates:
        try:
            return Checkpoint(ckpt, _verify(ckpt), skipped=latest_problems + problems)
        except _FormatRefused:
            raise
        except CheckpointError as exc:
            problems.append(str(exc))
    problems += latest_problems   # what the checkpoints themselves said first
    if problems:
        raise CheckpointError(f"{path}: no checkpoint verifies: {problems[0]}"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    raise CheckpointError(f"{path}: no checkpoint found (expected checkpoints/{LATEST} or {MANIFEST})")


# ---- does a checkpoint fit the run it is resumed or evaluated in ----

# Fields that must agree between a checkpoint and the config it is resumed with: what shapes the
# networks, the replay and what it holds (n-step returns, discounts), the environments and the
# processes whose state the checkpoint holds.
MUST_MATCH = ("topology", "env.id", "env.kwargs", "env.attributes", "env.max_episode_steps", "env.atari",
              "env.num_envs", "network.kind", "network.hidden_sizes", "network.dueling", "network.atoms",
              "network.v_min", "network.v_max", "replay.capacity", "replay.prioritized", "replay.storage",
              "replay.n_step", "learner.gamma", "workers.num_workers", "federated.clients")


def _field(cfg_dict: dict, path: str) -> Any:
    node = cfg_dict
    for part in path.split("."):
        node = node[part]
    return node


def check_compatible(checkpoint_cfg: Any, cfg: Any, where: Path) -> None:
    """A one-line CheckpointError naming the first field of ``MUST_MATCH`` that differs."""
    a, b = checkpoint_cfg.to_dict(), cfg.to_dict()
    for path in MUST_MATCH:
        if _field(a, path) != _field(b, path):
            raise CheckpointError(f"{where}: checkpoint does not match the config: {path} is "
                                  f"{_field(a, path)!r} in the checkpoint, {_field(b, path)!r} now")


@contextlib.contextmanager
def restoring(what: str = "the checkpoint") -> Iterator[None]:
    """Around loading state into a run's parts: a part that does not fit (a shape, a missing
    key) is one line, not a traceback."""
    try:
        yield
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[-1][:300] if text else type(exc).__name__
        raise CheckpointError(f"{what} does not fit this run ({type(exc).__name__}: {first})") from None
