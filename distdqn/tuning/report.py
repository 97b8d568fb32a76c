"""After the search: every trial ranked, the top configs trained again on fresh seeds (a
``distdqn compare`` of them), the best written as a preset, the report and its plot."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from distdqn.config import load_config, parse_yaml, raw_config, set_field
from distdqn.tuning.space import SearchPlan


@dataclass
class TrialOutcome:
    """One trial as Tune last saw it, with its run's summary.json where it finished."""

    trial_id: str
    params: dict[str, Any]
    status: str                       # solved, unsolved, stopped (early, by ASHA), failed
    score: float | None
    best_eval_return_mean: float | None
    solved_at: float | None           # wall seconds or env steps (the plan's time_attr)
    reached_t: float | None           # how far it ran, in time_attr
    run_dir: str
    error: str | None = None
    started_at: float = 0.0

    @property
    def completed(self) -> bool:
        return self.status in ("solved", "unsolved")


def describe_result(plan: SearchPlan, result: dict[str, Any]) -> str:
    """One trial's outcome in words (its last result)."""
    unit = "s" if plan.time_attr == "wall_s" else " env steps"
    if not result:
        return "no result"
    best = result.get("best_eval_return_mean")
    how = f"best eval {best:.1f}" if best is not None else "no evaluation"
    if result.get("solved"):
        at = result.get("time_to_solve_s") if plan.time_attr == "wall_s" else result.get("env_steps_to_solve")
        if at is not None:
            how = f"solved at {at:,.1f}{unit}; " + how
    if not result.get("run_ended"):
        how += f"; stopped early at {result.get(plan.time_attr, 0):,.1f}{unit}"
    return how


def collect_trials(plan: SearchPlan, results: Any) -> list[TrialOutcome]:
    """Every trial of Tune's ResultGrid, in the order they were started."""
    outcomes = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        run_dir = metrics.get("run_dir") or str(plan.out_dir.resolve() / "trials" / trial_id)
        if result.error is not None:
            status, error = "failed", str(result.error).strip().splitlines()[-1][:300]
        elif not metrics.get("run_ended"):   # Tune's own "done" is set on a stopped trial's last result too
            status, error = "stopped", None
        else:
            status, error = ("solved" if metrics.get("solved") else "unsolved"), None
        solved_at = None
        if metrics.get("solved"):
            solved_at = metrics.get("time_to_solve_s" if plan.time_attr == "wall_s" else "env_steps_to_solve")
            if solved_at is None:
                solved_at = metrics.get(plan.time_attr)
        outcomes.append(TrialOutcome(trial_id, dict(result.config or {}), status, metrics.get("score"),
                                     metrics.get("best_eval_return_mean"), solved_at,
                                     metrics.get(plan.time_attr), run_dir, error, metrics.get("started_at", 0.0)))
    return sorted(outcomes, key=lambda t: (t.started_at, t.trial_id))


def ranked(trials: list[TrialOutcome]) -> list[TrialOutcome]:
    """Best first: the higher score, trials that failed (no score) last."""
    return sorted(trials, key=lambda t: -t.score if t.score is not None and math.isfinite(t.score) else math.inf)


def write_preset(plan: SearchPlan, params: dict[str, Any], path: Path, description: str) -> None:
    """The base config (its own YAML, as a preset has it) with the overrides and ``params`` set:
    a preset that `distdqn train` reads; checked by loading it back."""
    _, raw = raw_config(plan.config)
    for assignment in plan.overrides:
        key, _, value = assignment.partition("=")
        set_field(raw, key.strip(), parse_yaml(value, key), key)
    for key, value in sorted(params.items()):
        set_field(raw, key, value, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"# {line}\n" for line in description.splitlines())
                    + yaml.safe_dump(raw, sort_keys=False))
    load_config(path)


def verify_and_report(plan: SearchPlan, trials: list[TrialOutcome], search_s: float, commit: str) -> Path:
    """Train the ``verify_top`` best configs on ``verify_seeds`` fresh seeds (one at a time), pick
    the best by the objective over those seeds, write best.yaml, report.md, results.json and
    search.png. Returns best.yaml's path (or the report's, when no trial completed)."""
    from distdqn.compare import compare, plan_comparison
    from distdqn.compare.report import aggregate, machine_description, software_versions

    order = ranked(trials)
    top = [t for t in order if t.completed][: plan.verify_top]
    config_files = []
    for t in top:
        path = plan.out_dir / "configs" / f"{t.trial_id}.yaml"
        write_preset(plan, t.params, path, f"{plan.cfg.env.id} on {plan.cfg.topology}: trial {t.trial_id} "
                     f"of `distdqn tune` (search score {t.score:.4g})\n{_values(t.params)}")
        config_files.append(str(path))
    verification, aggregates = [], {}
    if config_files and plan.verify_top:
        print(f"tune: verifying the top {len(config_files)} configs on seeds {plan.first_verify_seed}.."
              f"{plan.first_verify_seed + plan.verify_seeds - 1} (never seen by the search)",
              file=sys.stderr, flush=True)
        compare_plan = plan_comparison(config_files, plan.verify_seeds, plan.first_verify_seed,
                                       plan.trial_overrides(), plan.address, plan.out_dir / "verify",
                                       True, plan.command)
        verification = compare(compare_plan)
        aggregates = aggregate(verification)
    best = _best_verified(plan, top, compare_plan.entries if config_files and plan.verify_top else [], aggregates)
    best_path = plan.out_dir / "best.yaml"
    if best is not None:
        trial, agg = best
        figures = _verified_words(plan, agg) if agg is not None else "not verified"
        write_preset(plan, trial.params, best_path,
                     f"{plan.cfg.env.id} on {plan.cfg.topology}, found by `distdqn tune` (trial {trial.trial_id}, "
                     f"commit {commit})\nverified on fresh seeds: {figures}\n{_values(trial.params)}")
    provenance = {"commit": commit, "machine": machine_description(), "software": software_versions(),
                  "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "search_s": round(search_s, 1)}
    (plan.out_dir / "report.md").write_text(report_markdown(plan, order, best, aggregates, provenance))
    (plan.out_dir / "results.json").write_text(json.dumps({
        "command": plan.command, "objective": plan.objective, "provenance": provenance,
        "space": {k: d.describe() for k, d in plan.space.items()},
        "trials": [asdict(t) for t in order],
        "verification": {label: _plain(agg) for label, agg in aggregates.items()},
        "best": best[0].trial_id if best is not None else None}, indent=1, default=str))
    plot_search(plan, trials, plan.out_dir / "search.png")
    print(f"wrote {plan.out_dir / 'report.md'}" + (f" and {best_path}" if best is not None else ""),
          file=sys.stderr, flush=True)
    return best_path if best is not None else plan.out_dir / "report.md"


def _plain(agg: Any) -> dict[str, Any]:
    return asdict(agg)


def _values(params: dict[str, Any]) -> str:
    return "tuned: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


def _verified_words(plan: SearchPlan, agg: Any) -> str:
    words = f"{agg.solved}/{agg.runs} seeds solved"
    if agg.time_to_solve_s is not None:
        s = agg.time_to_solve_s
        words += f", time to solve median {s.median:.1f} s [{s.min:.1f}-{s.max:.1f}]"
    if agg.env_steps_to_solve is not None:
        words += f", env steps to solve median {agg.env_steps_to_solve.median:,.0f}"
    if agg.final_eval_return is not None:
        words += f", final eval median {agg.final_eval_return.median:.1f}"
    return words


def _verified_key(plan: SearchPlan, agg: Any) -> tuple:
    """Sort key, best first: more seeds solved, then the objective's median over the seeds."""
    if plan.objective == "return":
        return (-(agg.final_eval_return.median if agg.final_eval_return else -math.inf),)
    spread = agg.time_to_solve_s if plan.objective == "time_to_solve" else agg.env_steps_to_solve
    return (-agg.solved, spread.median if spread is not None else math.inf)


def _best_verified(plan: SearchPlan, top: list[TrialOutcome], entries: list, aggregates: dict):
    """(trial, its verification aggregate) of the best verified config; without a verification
    the search's best trial (aggregate None); None if no trial completed."""
    if not top:
        return None
    if not aggregates:
        return top[0], None
    by_label = {Path(e.config).stem: aggregates.get(e.label) for e in entries}
    scored = [(t, by_label.get(t.trial_id)) for t in top if by_label.get(t.trial_id) is not None]
    if not scored:
        return top[0], None
    return min(scored, key=lambda pair: _verified_key(plan, pair[1]))


def report_markdown(plan: SearchPlan, order: list[TrialOutcome], best, aggregates: dict,
                    provenance: dict[str, Any]) -> str:
    unit = "s" if plan.time_attr == "wall_s" else "env steps"
    keys = list(plan.space)
    counts = {s: sum(t.status == s for t in order) for s in ("solved", "unsolved", "stopped", "failed")}
    lines = [f"# distdqn tune: {plan.cfg.env.id} on {plan.cfg.topology}", "",
             f"`{plan.command}`", "",
             f"Base config `{plan.config}`{' with ' + ', '.join(plan.overrides) if plan.overrides else ''}; "
             f"objective **{plan.objective}**"
             + (f" (threshold {plan.threshold:g})" if plan.objective != "return" else "")
             + f"; {plan.search} search, {len(order)} trials on seed {plan.seed}, ASHA on {plan.time_attr} "
             f"(rungs from {plan.max_t / 9:,.4g} to {plan.max_t:,.4g} {unit}), {plan.max_concurrent} at a time; "
             f"search took {provenance['search_s']:.0f} s.", "",
             f"Trials: {counts['solved']} solved, {counts['unsolved']} ran their budget unsolved, "
             f"{counts['stopped']} stopped early, {counts['failed']} failed"
             + (". The first trial is the base config as it is." if plan.baseline is not None else "."), "",
             "Space: " + "; ".join(f"`{k}` {d.describe()}" for k, d in plan.space.items()), "",
             "## Trials, best first", "",
             "| rank | trial | " + " | ".join(f"`{k}`" for k in keys) + f" | outcome | solved at ({unit}) | best eval | score |",
             "|---:|---|" + "---|" * len(keys) + "---|---:|---:|---:|"]
    for rank, t in enumerate(order, 1):
        values = " | ".join(_fmt(t.params.get(k)) for k in keys)
        outcome = t.status if t.status != "stopped" else f"stopped at {t.reached_t:,.4g}"
        if t.status == "failed":
            outcome = f"failed: {t.error}"
        lines.append(f"| {rank} | {t.trial_id} | {values} | {outcome} | "
                     f"{'' if t.solved_at is None else f'{t.solved_at:,.4g}'} | "
                     f"{'' if t.best_eval_return_mean is None else f'{t.best_eval_return_mean:.1f}'} | "
                     f"{'' if t.score is None else f'{t.score:.4g}'} |")
    last_seed = plan.first_verify_seed + plan.verify_seeds - 1
    lines += ["", f"## Verification on seeds {plan.first_verify_seed}..{last_seed}", ""]
    if aggregates:
        lines += [(f"The top {len(aggregates)} completed trials, each trained again on {plan.verify_seeds} seeds "
                   "the search never saw, one run at a time ([verify/report.md](verify/report.md)):"), ""]
        for label, agg in aggregates.items():
            lines.append(f"- `{label}`: {_verified_words(plan, agg)}")
    else:
        lines.append("None (no trial completed, or --verify-top 0).")
    lines += ["", "## Best", ""]
    if best is None:
        lines.append("No trial completed: nothing to recommend.")
    else:
        trial, agg = best
        lines += [f"Trial `{trial.trial_id}`: {_values(trial.params)}.",
                  f"Verified: {_verified_words(plan, agg) if agg is not None else 'not verified'}.", "",
                  "Written as [best.yaml](best.yaml): `distdqn train " + str(plan.out_dir / "best.yaml") + "`."]
    lines += ["", "![the search](search.png)", "",
              (f"Commit {provenance['commit']}; {provenance['machine']}; {provenance['software']}; "
               f"{provenance['date']}."), ""]
    return "\n".join(lines)


def plot_search(plan: SearchPlan, trials: list[TrialOutcome], path: Path) -> None:
    """The score of each trial in the order started (the running best drawn through them), and
    the score against each searched key (log axes for the log distributions)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [(i, t) for i, t in enumerate(trials) if t.score is not None and math.isfinite(t.score)]
    n = 1 + len(plan.space)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    colors = {"solved": "tab:green", "unsolved": "tab:orange", "stopped": "tab:gray", "failed": "tab:red"}
    ax = axes[0][0]
    for i, t in scored:
        ax.scatter(i, t.score, color=colors[t.status], s=18)
    best, running = -math.inf, []
    for i, t in scored:
        best = max(best, t.score)
        running.append((i, best))
    if running:
        ax.step(*zip(*running), where="post", color="black", linewidth=1, label="best so far")
    if plan.objective != "return" and plan.threshold is not None:
        ax.axhline(plan.threshold, color="tab:green", linestyle=":", linewidth=1, label="solved above")
    ax.set_xlabel("trial (in the order started)")
    ax.set_ylabel("score")
    ax.set_title(f"{plan.cfg.env.id}: {plan.objective}")
    ax.legend(fontsize=7)
    for k, (key, dist) in enumerate(plan.space.items(), 1):
        ax = axes[k // cols][k % cols]
        for _, t in scored:
            value = t.params.get(key)
            x = json.dumps(value) if dist.kind == "choice" else value
            ax.scatter(x, t.score, color=colors[t.status], s=18)
        if dist.kind in ("loguniform", "logint"):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("score")
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


