"""Atomic save and restore of named components.

A checkpoint is a directory ``checkpoints/<name>/`` holding one file per component
(``learner.pt``, ``replay.pt``, ...), the resolved ``config.yaml`` and a ``manifest.json`` that lists
the components. It is written under a temporary name and renamed into place, so a crash never
leaves a half-written checkpoint under a real name; ``checkpoints/latest`` names the newest one and
is replaced atomically too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from distdqn.errors import CheckpointError

FORMAT_VERSION = 2   # 2: the one RunState schema (runtime/messages.py) of every topology
MANIFEST = "manifest.json"
BEST = "best"        # checkpoints/best: the network of the run's best evaluation (local/session.py)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(checkpoints_dir: Path, name: str, components: dict[str, Any], config_yaml: str,
                    info: dict[str, Any], latest: bool = True) -> Path:
    """Write ``components`` (picklable objects) as checkpoint ``name``; returns its directory.
    ``latest``: ``checkpoints/latest`` names it (not for ``best``, which is no point to resume from)."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / name
    tmp = checkpoints_dir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for key, obj in components.items():
        torch.save(obj, tmp / f"{key}.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    manifest = {"format_version": FORMAT_VERSION, "components": sorted(components),
                "created": time.time(), **info}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if final.exists():
        old = checkpoints_dir / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    if latest:
        _atomic_write_text(checkpoints_dir / "latest", name + "\n")
    return final


def prune_checkpoints(checkpoints_dir: Path, prefix: str, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints whose names start with ``prefix``."""
    found = sorted(p for p in checkpoints_dir.glob(f"{prefix}*") if (p / MANIFEST).exists())
    for old in found[:-keep] if keep > 0 else found:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: Path) -> Path:
    """A run directory, its ``checkpoints/`` folder, or a checkpoint directory -> the checkpoint directory."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    for base in (path / "checkpoints", path):
        latest = base / "latest"
        if latest.is_file():
            target = base / latest.read_text().strip()
            if (target / MANIFEST).is_file():
                return target
            raise CheckpointError(f"{path}: checkpoint {target.name!r} named by 'latest' is missing or incomplete")
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    raise CheckpointError(f"{path}: no checkpoint found (expected checkpoints/latest or {MANIFEST})")


def load_checkpoint(path: Path, keys: tuple[str, ...] | None = None) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Read a checkpoint: (components, config YAML text, manifest). Any damage is a CheckpointError.
    ``keys``: only those components (``()``: none, the config and manifest alone)."""
    ckpt = resolve_checkpoint(path)
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt}: corrupt checkpoint manifest ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{ckpt}: checkpoint format {manifest.get('format_version')!r}, "
                              f"this distdqn reads {FORMAT_VERSION} (start a new run)")
    components = {}
    for key in manifest.get("components", []):
        if keys is not None and key not in keys:
            continue
        try:
            components[key] = torch.load(ckpt / f"{key}.pt", map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"{ckpt}: corrupt component {key}.pt ({first_line})") from None
    try:
        config_yaml = (ckpt / "config.yaml").read_text()
    except OSError as exc:
        raise CheckpointError(f"{ckpt}: missing config.yaml ({exc})") from None
    return components, config_yaml, manifest
