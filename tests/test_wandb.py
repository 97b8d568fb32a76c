"""Weights & Biases (`log.wandb`), in offline mode: the W&B run written under the run directory holds
the resolved config, every row of metrics.jsonl (x = env steps) and the summary; a resumed run goes
on in the same W&B run; off by default. The run's .wandb file is read back record by record (its
framing below, its records W&B's own protobuf messages)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from distdqn.metrics import read_metrics
from tests.helpers import SHORT_RUN, run_cli

wandb_proto = pytest.importorskip("wandb.proto.wandb_internal_pb2", reason="the wandb extra")

OFFLINE = ["--set", "log.wandb.mode=offline", "--set", "log.wandb.tags=[test]"]
BLOCK = 32 * 1024   # a .wandb file: a 7-byte header, then LevelDB-log blocks of framed records


def records(path: Path) -> list:
    """The protobuf records of a .wandb file, in order (each framed as crc32, length, type; a record
    split over blocks is FIRST, MIDDLE..., LAST; a block's tail under 7 bytes is padding)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, payload, out = 7, b"", []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        payload += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):   # FULL or LAST
            record = wandb_proto.Record()
            record.ParseFromString(payload)
            out.append(record)
            payload = b""
    return out


def items(update) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in update}


def wandb_run(run_dir: Path) -> tuple[str, list]:
    """(the W&B run's id, its records) of the one offline run under ``run_dir``."""
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    return run_file.stem.removeprefix("run-"), records(run_file)


def of(recs: list, kind: str) -> list:
    return [getattr(r, kind) for r in recs if r.WhichOneof("record_type") == kind]


def test_an_offline_run_holds_the_config_every_metrics_row_and_the_summary(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "--run-dir", str(run_dir), "--seed", "1", *SHORT_RUN, *OFFLINE])
    assert result.returncode == 0, result.stderr[-3000:]
    run_id, recs = wandb_run(run_dir)
    assert (run_dir / "wandb-id").read_text().strip() == run_id
    (run,) = of(recs, "run")
    assert run.run_id == run_id and run.project == "distdqn" and run.display_name == "run"
    assert list(run.tags) == ["test"]
    config = items(run.config.update)
    config.pop("_wandb")
    assert config == yaml.safe_load((run_dir / "config.yaml").read_text())   # the resolved config, whole
    assert config["seed"] == 1
    rows = read_metrics(run_dir)
    history = [items(h.item) for h in of(recs, "history")]
    assert [h["env_steps"] for h in history] == [r["env_steps"] for r in rows]
    for h, row in zip(history, rows, strict=True):
        assert h["episode_return_mean"] == pytest.approx(row["episode_return_mean"])
        assert h["loss"] == pytest.approx(row["loss"])
    summary = json.loads((run_dir / "summary.json").read_text())
    last = {}
    for s in of(recs, "summary"):
        last.update(items(s.update))
    assert last["final_eval_return_mean"] == pytest.approx(summary["final_eval_return_mean"])
    assert last["env_steps"] == summary["env_steps"] and last["topology"] == "single"


def test_a_resumed_run_goes_on_in_the_same_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli(["train", "--run-dir", str(run_dir), *SHORT_RUN, *OFFLINE])
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (run_dir / "wandb-id").read_text().strip()
    resumed = run_cli(["train", "--resume", str(run_dir), "--set", "train.total_env_steps=4000"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [r.stem for r in runs] == [f"run-{run_id}"] * 2, runs
    second = [items(h.item)["env_steps"] for h in of(records(runs[1]), "history")]
    assert second and min(second) > 3000 and max(second) >= 4000, second


def test_off_by_default(short_run):
    assert not (short_run / "wandb").exists() and not (short_run / "wandb-id").exists()
