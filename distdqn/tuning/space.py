"""The search: a space file read and checked against the config, before anything starts (pure
but for reading files and making the env once).

SPACE.yaml::

    space:                                   # config keys (dotted, as --set takes them) -> a distribution
      learner.lr: {loguniform: [1.0e-4, 3.0e-3]}
      learner.batch_size: {choice: [32, 64, 128]}
      train.replay_ratio: {uniform: [0.1, 1.0]}
      replay.n_step: {int: [1, 5]}           # integers low..high, both included
      learner.target_update_period: {logint: [50, 1000]}
      network.hidden_sizes: {choice: [[64, 64], [128, 128]]}
    trials: 32                               # the rest: how to search (each also a command-line option)
    objective: time_to_solve                 # env_steps_to_solve, or return (the best evaluation's)
    budget_s: 60                             # a trial's wall-clock budget (train.max_wall_s)
    search: optuna                           # TPE (Optuna), or random
    max_concurrent: 1
    seed: 0

Every key is checked by building the config at each end of its range (each choice), so that an
unknown key, or a value the config refuses, is one line naming it before anything is started.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distdqn.config import Config, load_config, parse_yaml, raw_config
from distdqn.errors import ConfigError, UserError

OBJECTIVES = ("time_to_solve", "env_steps_to_solve", "return")
SEARCHES = ("optuna", "random")
KINDS = ("choice", "uniform", "loguniform", "int", "logint")
SETTINGS = ("trials", "objective", "budget_s", "search", "max_concurrent", "seed", "space")


class SpaceError(UserError):
    """The search space or its settings are invalid; the message names the key."""


@dataclass(frozen=True)
class Distribution:
    """One key's distribution: ``kind`` of KINDS over ``values`` (the choices, or [low, high])."""

    key: str
    kind: str
    values: tuple[Any, ...]

    @classmethod
    def parse(cls, key: str, spec: Any) -> Distribution:
        where = f"space: {key}"
        if not isinstance(spec, dict) or len(spec) != 1:
            raise SpaceError(f"{where}: expected one of {', '.join(KINDS)} with its values, "
                             f"for example {{loguniform: [1.0e-4, 1.0e-2]}} (got {spec!r})")
        (kind, values), = spec.items()
        if kind not in KINDS:
            raise SpaceError(f"{where}: unknown distribution {kind!r}; expected one of {', '.join(KINDS)}")
        if not isinstance(values, list):
            raise SpaceError(f"{where}: {kind} takes a list, got {values!r}")
        if kind == "choice":
            if not values:
                raise SpaceError(f"{where}: choice [] is empty: give at least one value")
            return cls(key, kind, tuple(values))
        if len(values) != 2 or not all(_is_number(v) for v in values):
            raise SpaceError(f"{where}: {kind} takes [low, high], two numbers (got {values!r})")
        low, high = values
        if kind in ("int", "logint") and not all(float(v).is_integer() for v in values):
            raise SpaceError(f"{where}: {kind} takes two integers (got {values!r})")
        empty = low > high if kind in ("int", "logint") else low >= high
        if empty:
            relation = "<=" if kind in ("int", "logint") else "<"
            raise SpaceError(f"{where}: {kind} [{low}, {high}] is an empty range (low must be {relation} high)")
        if kind in ("loguniform", "logint") and low <= 0:
            raise SpaceError(f"{where}: {kind} [{low}, {high}] needs low > 0")
        if kind in ("int", "logint"):
            return cls(key, kind, (int(low), int(high)))
        return cls(key, kind, (float(low), float(high)))

    def corners(self) -> tuple[Any, ...]:
        """Values that must each make a valid config: every choice, or both ends of the range."""
        return self.values

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(_same(value, v) for v in self.values)
        if not _is_number(value):
            return False
        low, high = self.values
        return low <= value <= high and (self.kind not in ("int", "logint") or float(value).is_integer())

    def tune_domain(self) -> Any:
        from ray import tune
        low, high = self.values if self.kind != "choice" else (None, None)
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(low, high)
        if self.kind == "loguniform":
            return tune.loguniform(low, high)
        if self.kind == "int":
            return tune.randint(low, high + 1)     # Tune's upper bound is exclusive
        return tune.lograndint(low, high + 1)

    def describe(self) -> str:
        return f"{self.kind} {list(self.values)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a) == json.dumps(b)


def override(key: str, value: Any) -> str:
    """``key=value`` as ``--set`` takes it (the value written as YAML flow: JSON is YAML)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = float(value)
    return f"{key}={json.dumps(value)}"


@dataclass
class SearchPlan:
    """Everything a search needs, checked: the base config, the space, the settings, where to write."""

    config: str                                # as given: a preset's name or a YAML path
    cfg: Config                                # the base config, its overrides applied
    overrides: list[str]
    space: dict[str, Distribution]
    objective: str
    trials: int
    budget_s: float | None
    search: str
    max_concurrent: int
    seed: int
    out_dir: Path
    address: str | None
    command: str
    threshold: float | None                    # the solve threshold (time objectives)
    baseline: dict[str, Any] | None = None     # the base config's values, when the space holds them all
    verify_top: int = 3
    verify_seeds: int = 3
    first_verify_seed: int = 1000
    space_file: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def time_attr(self) -> str:
        """What a trial's progress is measured in (ASHA's rungs)."""
        return "wall_s" if self.objective == "time_to_solve" else "env_steps"

    @property
    def max_t(self) -> float:
        return float(self.budget_s) if self.time_attr == "wall_s" else float(self.cfg.train.total_env_steps)

    def trial_overrides(self) -> list[str]:
        """What every trial sets besides its sampled values: its budget and, for the time
        objectives, an end at the first evaluation that solves."""
        fixed = list(self.overrides)
        if self.budget_s is not None:
            fixed.append(override("train.max_wall_s", float(self.budget_s)))
        if self.objective != "return":
            fixed.append("eval.stop_when_solved=true")
        return fixed


def read_space_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpaceError(f"--space: {path}: no such file")
    try:
        loaded = parse_yaml(path.read_text(), str(path))
    except ConfigError as exc:
        raise SpaceError(f"--space: {exc}") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("space"), dict) or not loaded["space"]:
        raise SpaceError(f"--space: {path}: expected a mapping with a non-empty `space:` of "
                         "config keys to distributions")
    unknown = sorted(set(loaded) - set(SETTINGS))
    if unknown:
        raise SpaceError(f"--space: {path}: unknown setting {unknown[0]!r}; expected one of {', '.join(SETTINGS)}")
    return loaded


_MISSING = object()


def _leaf(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def baseline_values(config: str, cfg: Config, space: dict[str, Distribution]) -> dict[str, Any] | None:
    """The base config's value of every searched key, if each lies in its space (then the search
    starts from the config as it is, so that it can only do better); else None."""
    resolved = cfg.to_dict()
    values = {}
    for key, dist in space.items():
        value = _leaf(resolved, key)
        if value is _MISSING or not dist.contains(value):
            return None
        values[key] = value
    return values


def plan_search(config: str, space_file: Path, out_dir: Path | None, *, overrides: list[str] = (),
                options: dict[str, Any] | None = None, address: str | None = None, command: str = "",
                resume: bool = False, overwrite: bool = False, verify_top: int = 3, verify_seeds: int = 3,
                first_verify_seed: int = 1000) -> SearchPlan:
    """Read and check everything; raise SpaceError/ConfigError naming the key otherwise. Nothing
    is written or started. ``options``: settings from the command line (over the file's)."""
    from distdqn.envs import env_info
    raw_config(config)                          # an unknown preset or file: one line
    cfg = load_config(config, list(overrides))
    info = env_info(cfg.env)
    loaded = read_space_file(space_file)
    settings = {k: v for k, v in loaded.items() if k != "space"}
    settings.update({k: v for k, v in (options or {}).items() if v is not None})
    space = {}
    for key, spec in loaded["space"].items():
        if not isinstance(key, str) or not key.strip():
            raise SpaceError(f"space: {key!r}: expected a dotted config key such as learner.lr")
        dist = Distribution.parse(key, spec)
        for value in dist.corners():
            try:
                load_config(config, [*overrides, override(key, value)])
            except ConfigError as exc:
                raise SpaceError(f"space: {key}: {dist.kind} value {value!r} is refused: {exc}") from None
        space[key] = dist

    objective = settings.get("objective", "time_to_solve")
    if objective not in OBJECTIVES:
        raise SpaceError(f"objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    search = settings.get("search", "optuna")
    if search not in SEARCHES:
        raise SpaceError(f"search: {search!r} is not one of {', '.join(SEARCHES)}")
    if search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise SpaceError("search: optuna needs the optuna package (pip install optuna), "
                             "or use search: random") from None
    trials = _positive_int(settings, "trials", 16)
    max_concurrent = _positive_int(settings, "max_concurrent", 1)
    seed = settings.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SpaceError(f"seed: expected an integer >= 0, got {seed!r}")
    budget_s = settings.get("budget_s", cfg.train.max_wall_s)
    if budget_s is not None and (not _is_number(budget_s) or budget_s <= 0):
        raise SpaceError(f"budget_s: expected seconds > 0, got {budget_s!r}")
    if objective == "time_to_solve" and budget_s is None:
        raise SpaceError("budget_s: objective time_to_solve needs a trial's wall-clock budget "
                         "(budget_s in the space file, --budget-s, or train.max_wall_s)")
    threshold = cfg.eval.solve_threshold if cfg.eval.solve_threshold is not None else info.reward_threshold
    if objective != "return" and threshold is None:
        raise SpaceError(f"objective: {objective} needs a solve threshold, and {cfg.env.id} has no "
                         "reward_threshold: set eval.solve_threshold, or use objective: return")
    if out_dir is None:
        raise SpaceError("--out: give the search's directory")
    if resume:
        if not (out_dir / "search.json").is_file():
            raise SpaceError(f"--resume: {out_dir} holds no search (no search.json)")
    elif out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite or not out_dir.is_dir():
            raise SpaceError(f"--out: {out_dir} already exists and is not empty; pass --overwrite "
                             "to replace it, or --resume to go on with its search")
        if not (out_dir / "search.json").is_file():
            raise SpaceError(f"--overwrite: {out_dir} is not a distdqn search (no search.json); "
                             "refusing to delete it")
    plan = SearchPlan(config, cfg, list(overrides), space, objective, trials,
                      float(budget_s) if budget_s is not None else None, search, max_concurrent, seed,
                      out_dir, address, command, threshold, verify_top=verify_top,
                      verify_seeds=verify_seeds, first_verify_seed=first_verify_seed,
                      space_file=str(space_file), settings=settings)
    if verify_top < 0 or verify_seeds < 1:
        raise SpaceError("--verify-top must be >= 0 and --verify-seeds >= 1")
    if first_verify_seed <= seed:
        raise SpaceError(f"--first-verify-seed: {first_verify_seed} must be above the search's seed {seed} "
                         "(verification runs on seeds the search never saw)")
    return replace(plan, baseline=baseline_values(config, cfg, space))


def _positive_int(settings: dict[str, Any], name: str, default: int) -> int:
    value = settings.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpaceError(f"{name}: expected an integer >= 1, got {value!r}")
    return value
