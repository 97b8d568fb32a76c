"""Plan a comparison: load and check every config, decide labels and directories. Nothing is written here."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from distdqn.config import Config, load_config
from distdqn.errors import UserError

PLOTS = ("return_vs_env_steps.png", "return_vs_wall_s.png")


# ============================================================================================
# Plan: load and check every config, decide labels and directories. Nothing is written here.

@dataclass
class ConfigEntry:
    config: str
    """As given: a YAML file's path or a preset's name."""
    label: str
    cfg: Config
    overrides: list[str] = field(default_factory=list)
    """This entry's own ``--set``s (the swept key's value)."""
    base: str = ""
    """The config's label before the sweep (the label, without a sweep)."""
    sweep_value: str | None = None


@dataclass(frozen=True)
class Sweep:
    """``--sweep KEY=V1,V2,...``: every config is run at each value of one key."""

    key: str
    values: list[str]

    @classmethod
    def parse(cls, text: str) -> Sweep:
        key, _, values = text.partition("=")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not key.strip() or not items:
            raise UserError(f"--sweep: expected KEY=V1,V2,... such as workers.num_workers=1,2,4 (got {text!r})")
        return cls(key.strip(), items)

    @property
    def leaf(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    def numeric(self) -> list[float] | None:
        try:
            return [float(v) for v in self.values]
        except ValueError:
            return None


@dataclass
class Plan:
    entries: list[ConfigEntry]
    seeds: list[int]
    out_dir: Path
    overwrite: bool
    overrides: list[str]
    address: str | None
    command: str
    sweep: Sweep | None = None

    @property
    def env_id(self) -> str:
        return self.entries[0].cfg.env.id

    @property
    def total_runs(self) -> int:
        return len(self.entries) * len(self.seeds)

    def run_name(self, entry: ConfigEntry, seed: int) -> str:
        return f"{entry.label.replace(' ', '_')}-s{seed}"


def config_labels(configs: list[str], topologies: list[str]) -> list[str]:
    """The topology, or the config's name where two configs share a topology: a file's stem, or a
    preset's name (which is its file's stem); a name still taken twice (the same stem in two
    folders) gets -1, -2, ... in the order given."""
    shared = Counter(topologies)
    labels = [t if shared[t] == 1 else Path(c).stem for c, t in zip(configs, topologies)]
    repeated = Counter(labels)
    taken = {label for label in labels if repeated[label] == 1}
    unique = []
    for label in labels:
        if repeated[label] > 1:
            n = 1
            while f"{label}-{n}" in taken:
                n += 1
            label = f"{label}-{n}"
            taken.add(label)
        unique.append(label)
    return unique


def plan_comparison(configs: list[str], seeds: int, first_seed: int, overrides: list[str],
                    address: str | None, out_dir: Path | None, overwrite: bool,
                    command: str, sweep: str | None = None) -> Plan:
    """Load every config with the overrides (at every value of the ``sweep``), check they pose the
    same task and that the output directory may be written; raise UserError otherwise."""
    from distdqn.envs import env_info

    if not configs:
        raise UserError("compare: give at least one config")
    cfgs = [load_config(config, overrides) for config in configs]
    for config, cfg in zip(configs[1:], cfgs[1:]):
        if cfg.env.id != cfgs[0].env.id:
            raise UserError(f"compare: the configs must train the same environment: {configs[0]} has "
                            f"env.id {cfgs[0].env.id}, {config} has env.id {cfg.env.id}")
    for cfg in cfgs:
        env_info(cfg.env)   # an unknown id or an unusable env fails here, not in every run
    labels = config_labels(configs, [cfg.topology for cfg in cfgs])
    if out_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = Path("reports") / f"compare-{cfgs[0].env.id.replace('/', '-')}-{stamp}"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out: {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"--out: {out_dir} already exists and is not empty; pass --overwrite to replace it")
    entries = [ConfigEntry(c, label, cfg, base=label) for c, label, cfg in zip(configs, labels, cfgs)]
    swept = Sweep.parse(sweep) if sweep is not None else None
    if swept is not None:   # each config at each value; a value the config refuses fails here
        entries = [ConfigEntry(e.config, f"{e.label} {swept.leaf}={v}",
                               load_config(e.config, [*overrides, f"{swept.key}={v}"]),
                               [f"{swept.key}={v}"], e.label, v)
                   for e in entries for v in swept.values]
    return Plan(entries, list(range(first_seed, first_seed + seeds)), out_dir, overwrite,
                list(overrides), address, command, swept)


# ============================================================================================
# Run: one `distdqn train` subprocess per (config, seed), one at a time.
