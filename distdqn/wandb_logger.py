"""Weights & Biases beside TensorBoard (``log.wandb``, ``pip install 'distdqn[wandb]'``).

Off unless ``log.wandb.mode`` says ``online`` or ``offline``. The W&B run gets the resolved
config, every metrics row (x = env steps, as in TensorBoard) and, at the end, the summary. Its
files live under the run directory (``wandb/``); its id is kept in ``wandb-id`` there, so that a
resumed run goes on in the same W&B run. ``offline`` needs no network (``wandb sync`` uploads it).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from distdqn.config import Config


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class WandbWriter:
    """One W&B run for one distdqn run (or resumed segment)."""

    def __init__(self, cfg: Config, run_dir: Path):
        import wandb

        w = cfg.log.wandb
        id_file = run_dir / "wandb-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
        id_file.write_text(run_id + "\n")
        os.environ.setdefault("WANDB_SILENT", "true")   # W&B's own banner stays out of the terminal
        self.run = wandb.init(project=w.project, entity=w.entity, name=w.name or run_dir.name, group=w.group,
                              tags=list(w.tags), config=cfg.to_dict(), dir=str(run_dir), mode=w.mode,
                              id=run_id, resume="allow", settings=wandb.Settings(console="off"))
        self.run.define_metric("env_steps")
        self.run.define_metric("*", step_metric="env_steps")   # x = env steps, as in TensorBoard

    def scalars(self, values: dict[str, Any], step: int) -> None:
        self.run.log({**_numbers(values), "env_steps": step})

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if summary:
            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float | str | bool)})
        self.run.finish()
