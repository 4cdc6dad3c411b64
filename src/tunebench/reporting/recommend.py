"""The recommendation: under each budget of `report.budgets`, which configuration to use, with the
numbers behind it.

For each budget, from the configurations (configurations.py) that finished and fit it:
- the best by the report's metric (mean over seeds), and the runner-up;
- every configuration statistically tied with the best: its interval overlaps the best's. With
  one seed there is no interval, and the answer says so instead of calling anything tied;
- the cheapest configuration whose mean is within `report.margin` of the best's;
- the configurations that do not fit, each with the reason: measured out of memory, predicted
  not to fit, failed, or over the budget's memory, cost or hours.
A budget nothing fits says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from tunebench.spec import LOWER_IS_BETTER, Budget, Experiment

UNFINISHED = {
    "oom": "measured out of memory",
    "predicted_oom": "predicted not to fit (resources.predicted_oom)",
    "failed": "failed",
    "missing_model": "model missing",
    "missing": "no result",
    "skipped": "not run",
}


@dataclass
class Choice:
    configuration: str
    mean: float
    low: float  # NaN with one seed
    high: float
    seeds: int
    gpu_memory_gb: float
    gpu_memory_source: str
    cost: float
    hours: float
    gain_vs_base: float  # NaN where the metric has no baseline (losses)


@dataclass
class Answer:
    budget: Budget
    metric: str
    higher_is_better: bool
    best: Choice | None = None
    runner_up: Choice | None = None
    tied: list[Choice] = field(default_factory=list)
    one_seed: bool = False  # no interval: ties cannot be judged
    cheapest_within_margin: Choice | None = None
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (configuration, why)


def ranking_dataset(exp: Experiment):
    """The dataset the recommendation is made on: report.dataset, else the first."""
    return next(d for d in exp.datasets if d.name == (exp.report.dataset or exp.datasets[0].name))


def ranking_metric(exp: Experiment) -> tuple[str, bool]:
    """(metric, higher is better): report.metric, else that dataset's first metric."""
    metric = exp.report.metric or ranking_dataset(exp).evaluation.metrics[0]
    return metric, metric not in LOWER_IS_BETTER


def _why_not(row: pd.Series, budget: Budget, currency: str) -> str | None:
    """Why a configuration cannot be recommended under `budget` (None: it can)."""
    if row["status"] != "ok":
        why = UNFINISHED.get(row["status"], row["status"])
        return f"{why}: {row['reason']}" if row["reason"] else why
    memory = row["gpu_memory_gb"]
    if budget.gpu_memory_gb is not None:
        if pd.isna(memory):
            return "no measured or predicted GPU memory"
        if memory > budget.gpu_memory_gb:
            return f"{row['gpu_memory_source']} peak {memory:.2f} GB > {budget.gpu_memory_gb:g} GB"
    if budget.cost is not None and not row["cost"] <= budget.cost:
        return f"cost {row['cost']:.4g} {currency} > {budget.cost:g}"
    if budget.hours is not None and not row["hours"] <= budget.hours:
        return f"{duration(row['hours'])} of training > {duration(budget.hours)}"
    return None


def _choice(row: pd.Series, metric: str) -> Choice:
    gain = row.get(f"delta_{metric}_vs_base", math.nan)
    return Choice(
        configuration=row["configuration"],
        mean=row[metric],
        low=row.get(f"{metric}_low", math.nan),
        high=row.get(f"{metric}_high", math.nan),
        seeds=int(row["finished"]),
        gpu_memory_gb=row["gpu_memory_gb"],
        gpu_memory_source=row["gpu_memory_source"],
        cost=row["cost"],
        hours=row["hours"],
        gain_vs_base=math.nan if gain is None else gain,
    )


def _cost_key(row: pd.Series) -> tuple:
    """Cheapest first: money, then GPU memory, then time (NaN last)."""
    return tuple(
        math.inf if pd.isna(v) else v for v in (row["cost"], row["gpu_memory_gb"], row["hours"])
    )


def recommend(configs: pd.DataFrame, exp: Experiment) -> list[Answer]:
    metric, higher = ranking_metric(exp)
    currency = exp.cost.currency
    dataset = ranking_dataset(exp).name
    candidates = configs[(configs["method"] != "base") & (configs["dataset"] == dataset)]
    answers = []
    for budget in exp.report.budgets:
        answer = Answer(budget, metric, higher)
        fitting = []
        for _, row in candidates.iterrows():
            why = _why_not(row, budget, currency)
            if why is None and pd.isna(row.get(metric)):
                why = f"no {metric}"
            if why is None:
                fitting.append(row)
            else:
                answer.excluded.append((row["configuration"], why))
        if fitting:
            ranked = sorted(
                fitting, key=lambda r: (-r[metric] if higher else r[metric], _cost_key(r))
            )
            best = ranked[0]
            answer.best = _choice(best, metric)
            answer.runner_up = _choice(ranked[1], metric) if len(ranked) > 1 else None
            answer.one_seed = pd.isna(best.get(f"{metric}_low"))
            if not answer.one_seed:
                answer.tied = [
                    _choice(r, metric)
                    for r in ranked[1:]
                    if pd.notna(r.get(f"{metric}_low"))
                    and r[f"{metric}_low"] <= best[f"{metric}_high"]
                    and r[f"{metric}_high"] >= best[f"{metric}_low"]
                ]
            margin = exp.report.margin
            close = [
                r
                for r in ranked
                if (best[metric] - r[metric] if higher else r[metric] - best[metric]) <= margin
            ]
            answer.cheapest_within_margin = _choice(min(close, key=_cost_key), metric)
        answers.append(answer)
    return answers


def duration(hours: float) -> str:
    """Seconds under a minute, minutes under an hour, else hours."""
    seconds = hours * 3600
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{hours:.1f} h"


def limits(budget: Budget, currency: str) -> str:
    parts = []
    if budget.gpu_memory_gb is not None:
        parts.append(f"GPU memory <= {budget.gpu_memory_gb:g} GB")
    if budget.cost is not None:
        parts.append(f"cost <= {budget.cost:g} {currency}")
    if budget.hours is not None:
        parts.append(f"training <= {duration(budget.hours)}")
    return ", ".join(parts) or "no limit"


def describe(c: Choice, metric: str, currency: str) -> str:
    interval = (
        f" (95% interval {c.low:.3f} to {c.high:.3f}, {c.seeds} seeds)"
        if not math.isnan(c.low)
        else f" ({c.seeds} seed{'s' if c.seeds != 1 else ''}: no interval)"
    )
    gain = "" if math.isnan(c.gain_vs_base) else f", {c.gain_vs_base:+.3f} vs the untuned model"
    memory = (
        f"{c.gpu_memory_gb:.2f} GB GPU memory ({c.gpu_memory_source})"
        if not math.isnan(c.gpu_memory_gb)
        else "GPU memory unknown"
    )
    cost = "" if math.isnan(c.cost) else f", cost {c.cost:.4g} {currency}"
    hours = "" if math.isnan(c.hours) else f", {duration(c.hours)} of training"
    return f"**{c.configuration}**: {metric} {c.mean:.3f}{interval}{gain}; {memory}{cost}{hours}"


def markdown(answers: list[Answer], exp: Experiment) -> str:
    """The recommendation as Markdown (recommendation.md and the report's first section)."""
    currency = exp.cost.currency
    if not answers:
        return "# Recommendation\n\nNo budgets (report.budgets is empty).\n"
    metric, higher = answers[0].metric, answers[0].higher_is_better
    lines = [
        f"# Recommendation: {exp.name}",
        "",
        f"Ranked by **{metric}** on dataset {ranking_dataset(exp).name!r} "
        f"({'higher' if higher else 'lower'} is better), mean over seeds. Tied: "
        f"{exp.report.confidence:.0%} intervals overlap the best's. Cheapest "
        f"within margin: mean within {exp.report.margin:g} of the best. GPU memory is measured "
        "where the run trained on a GPU, else predicted by `tunebench estimate`.",
    ]
    for a in answers:
        limit = limits(a.budget, currency)
        title = a.budget.name if limit == a.budget.name else f"{a.budget.name} ({limit})"
        lines += ["", f"## {title}", ""]
        if a.best is None:
            lines.append("**Nothing fits this budget.**")
        else:
            lines.append(f"- Best: {describe(a.best, metric, currency)}")
            if a.runner_up:
                lines.append(f"- Runner-up: {describe(a.runner_up, metric, currency)}")
            if a.one_seed:
                lines.append(
                    "- Tied with the best: one seed: no interval, so no tie can be "
                    "judged (add seeds to training.seeds)"
                )
            elif a.tied:
                names = ", ".join(c.configuration for c in a.tied)
                lines.append(f"- Statistically tied with the best: {names}")
            else:
                lines.append("- Statistically tied with the best: none")
            cheap = a.cheapest_within_margin
            if cheap and cheap.configuration != a.best.configuration:
                lines.append(
                    f"- Cheapest within {exp.report.margin:g}: {describe(cheap, metric, currency)}"
                )
            elif cheap:
                lines.append(f"- Cheapest within {exp.report.margin:g}: the best itself")
        for name, why in a.excluded:
            lines.append(f"- Does not fit: {name}: {why}")
    return "\n".join(lines) + "\n"
