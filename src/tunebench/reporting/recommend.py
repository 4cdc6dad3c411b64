"""The recommendation: under each budget of `report.budgets`, which configuration to use, with the
numbers behind it.

For each budget, from the configurations (configurations.py) that finished and fit it:
- the best by the report's metric (mean over seeds), and the runner-up;
- every configuration statistically tied with the best: its interval overlaps the best's. With
  one seed there is no interval, and the answer says so instead of calling anything tied;
- the cheapest configuration whose mean is within `report.margin` of the best's;
- given the results folder: P(best) of every configuration that fits, the posterior of a
  hierarchical model of the paired per-item scores and seeds (confidence.py); "not decided"
  when none reaches `report.p_best_threshold`; the smallest difference a test set of its size
  can detect;
- the configurations that do not fit, each with the reason: measured out of memory, predicted
  not to fit, failed, or over the budget's memory, cost or hours, or over its retention limit
  (`max_forgetting`: how much it forgot on a retention measure, retention.py).
A learning-rate search (search.py) is a candidate at its validation-chosen learning rate only:
each method is compared at its own best learning rate, chosen without a test score.
A budget nothing fits says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tunebench import retention
from tunebench.reporting import confidence
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
    p_best: float = math.nan  # among the configurations that fit the budget; NaN: not computed
    forgot: float = math.nan  # on the budget's retention measure; NaN: the budget has none


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
    # P(best) of every configuration that fits, highest first; empty when not computed.
    p_best: list[tuple[str, float]] = field(default_factory=list)
    decided: bool | None = None  # whether one reached report.p_best_threshold; None: not known
    no_p_best: str = ""  # why P(best) was not computed ("" when it was, or was not asked for)
    test_items: int = 0
    seeds_resampled: bool = False  # some configuration that fits had several seeds
    detectable: float = math.nan  # the minimum detectable difference at the best's level
    # Adaptive seeds: (configuration, "N seeds: why") of each candidate; empty without the rule.
    seeds_why: list[tuple[str, str]] = field(default_factory=list)


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
    if budget.max_forgetting is not None:
        measure, limit = budget.max_forgetting.measure, budget.max_forgetting.limit
        forgot = forgetting(row, measure)
        if math.isnan(forgot):
            return f"no {measure} (its retention set was not scored: see the run's reason)"
        if forgot > limit:
            return f"forgot {forgot:.3g} in {measure} > {limit:g} (max_forgetting)"
    return None


def forgetting(row: pd.Series, measure: str) -> float:
    """How much a configuration forgot on a retention measure (mean over seeds, against the
    untuned model): a loss's rise or an accuracy's fall; NaN when not scored."""
    delta = row.get(f"delta_{measure}_vs_base", math.nan)
    return math.nan if pd.isna(delta) else retention.forgetting(float(delta), measure)


def _choice(row: pd.Series, metric: str, budget: Budget | None = None) -> Choice:
    gain = row.get(f"delta_{metric}_vs_base", math.nan)
    limit = budget.max_forgetting if budget is not None else None
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
        forgot=math.nan if limit is None else forgetting(row, limit.measure),
    )


def _cost_key(row: pd.Series) -> tuple:
    """Cheapest first: money, then GPU memory, then time (NaN last)."""
    return tuple(
        math.inf if pd.isna(v) else v for v in (row["cost"], row["gpu_memory_gb"], row["hours"])
    )


def _p_best(answer: Answer, fitting: list, exp: Experiment, scored) -> dict | None:
    """P(best) of each configuration that fits (by its row's index), or None with the reason
    in the answer; the verdict, the test set's size and its detectable difference."""
    if answer.metric not in confidence.PER_ITEM:
        answer.no_p_best = f"{answer.metric} is not scored per test item"
        return None
    mats = {}
    for row in fitting:
        got = scored(row)
        if isinstance(got, str):
            answer.no_p_best = f"{row['configuration']}: {got}"
            return None
        mats[row.name] = got
    if len({ids for ids, _ in mats.values()}) > 1:
        answer.no_p_best = "the configurations were scored on different test items"
        return None
    probability = confidence.p_best(
        {key: values for key, (_, values) in mats.items()}, answer.higher_is_better
    )
    names = {row.name: row["configuration"] for row in fitting}
    answer.p_best = sorted(
        ((names[k], p) for k, p in probability.items()), key=lambda item: -item[1]
    )
    answer.decided = answer.p_best[0][1] >= exp.report.p_best_threshold
    answer.test_items = next(iter(mats.values()))[1].shape[1]
    answer.seeds_resampled = any(values.shape[0] > 1 for _, values in mats.values())
    answer.detectable = confidence.minimum_detectable_difference(
        mats[fitting[0].name][1], exp.report.confidence
    )
    return probability


def recommend(configs: pd.DataFrame, exp: Experiment, root: Path | None = None) -> list[Answer]:
    """The answer under each budget. With `root` (the results folder: its samples files hold
    the per-item test scores) each answer also says how sure it is."""
    metric, higher = ranking_metric(exp)
    currency = exp.cost.currency
    dataset = ranking_dataset(exp).name
    candidates = configs[(configs["method"] != "base") & (configs["dataset"] == dataset)]
    # A learning-rate search is a candidate at its validation-chosen learning rate only
    # (search.py); one where none could be chosen is a reason of its own.
    unchosen = []
    if "candidate" in candidates:
        searched = candidates[candidates["lr_search"] & candidates["lr_chosen"].isna()]
        unchosen = [
            (group, f"no learning rate chosen on validation: {rows.iloc[0]['lr_tried']}")
            for group, rows in searched.groupby("lr_group", sort=False)
        ]
        candidates = candidates[candidates["candidate"]]
    read: dict = {}

    def scored(row: pd.Series):
        """A configuration's (item ids, seeds x items), or why not; read once for all budgets."""
        if row.name not in read:
            try:
                read[row.name] = confidence.configuration_scores(root, row["run_ids"], metric)
            except confidence.NoItemScores as why:
                read[row.name] = str(why)
        return read[row.name]

    answers = []
    for budget in exp.report.budgets:
        answer = Answer(budget, metric, higher)
        if "seeds_why" in candidates:
            answer.seeds_why = [
                (r["configuration"], r["seeds_why"])
                for _, r in candidates.iterrows()
                if isinstance(r["seeds_why"], str) and r["seeds_why"]
            ]
        fitting = []
        for _, row in candidates.iterrows():
            why = _why_not(row, budget, currency)
            if why is None and pd.isna(row.get(metric)):
                why = f"no {metric}"
            if why is None:
                fitting.append(row)
            else:
                answer.excluded.append((row["configuration"], why))
        answer.excluded += unchosen
        if fitting:
            ranked = sorted(
                fitting, key=lambda r: (-r[metric] if higher else r[metric], _cost_key(r))
            )
            best = ranked[0]
            answer.best = _choice(best, metric, budget)
            answer.runner_up = _choice(ranked[1], metric, budget) if len(ranked) > 1 else None
            answer.one_seed = pd.isna(best.get(f"{metric}_low"))
            if not answer.one_seed:
                answer.tied = [
                    _choice(r, metric, budget)
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
            cheapest = min(close, key=_cost_key)
            answer.cheapest_within_margin = _choice(cheapest, metric, budget)
            # ranked[0] first: the detectable difference is taken at the best's level.
            probability = _p_best(answer, ranked, exp, scored) if root is not None else None
            if probability is not None:
                answer.best.p_best = probability[best.name]
                if answer.runner_up is not None:
                    answer.runner_up.p_best = probability[ranked[1].name]
                answer.cheapest_within_margin.p_best = probability[cheapest.name]
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
    if budget.max_forgetting is not None:
        limit = budget.max_forgetting
        parts.append(f"forgetting <= {limit.limit:g} in {limit.measure}")
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
    sure = "" if math.isnan(c.p_best) else f", P(best) {share(c.p_best)}"
    forgot = "" if math.isnan(c.forgot) else f", forgot {c.forgot:+.3g}"
    return (
        f"**{c.configuration}**: {metric} {c.mean:.3f}{interval}{sure}{gain}{forgot}; "
        f"{memory}{cost}{hours}"
    )


def share(p: float) -> str:
    """A P(best) as shown: a resample share that is not exactly 0 or 1 is never rounded to it."""
    if p in (0.0, 1.0):
        return f"{p:.0f}"
    return "<0.01" if p < 0.01 else ">0.99" if p > 0.99 else f"{p:.2f}"


def how_sure(a: Answer, exp: Experiment) -> list[str]:
    """The verdict and the detectable difference of one budget's answer, as Markdown items."""
    if a.no_p_best:
        return [f"- P(best): not computed: {a.no_p_best}"]
    if not a.p_best:
        return []
    threshold = exp.report.p_best_threshold
    basis = confidence.describe(a.test_items, a.seeds_resampled)
    shown = [f"{name} {share(p)}" for name, p in a.p_best if p > 0]
    never = len(a.p_best) - len(shown)
    each = ", ".join(shown) + (f"; 0 for the other {never}" if never else "")
    leader, top = a.p_best[0]
    if len(a.p_best) == 1:
        lines = [f"- Decided: {leader} is the only configuration that fits (P(best) 1)"]
    elif a.decided:
        lines = [
            f"- Decided: {leader} has P(best) {share(top)} >= {threshold:g} "
            f"(report.p_best_threshold), the share of {basis} in which it has the best mean "
            f"of the {len(a.p_best)} configurations that fit. P(best) of each: {each}"
        ]
    else:
        lines = [
            f"- **Not decided**: no configuration reaches P(best) {threshold:g} "
            f"(report.p_best_threshold) over {basis}. P(best) of each: {each}"
        ]
    if len(a.p_best) > 1 and not a.seeds_resampled:
        lines[-1] += (
            ". One seed each: P(best) counts the test items' noise, not a rerun's (add seeds "
            "to training.seeds)"
        )
    if not math.isnan(a.detectable) and a.best is not None:
        gap = ""
        if a.runner_up is not None:
            diff = abs(a.best.mean - a.runner_up.mean)
            gap = f". The gap to the runner-up is {diff:.3f}"
            if diff < a.detectable and a.decided:
                gap += ", told apart here because both were scored on the same items"
        lines.append(
            f"- Minimum detectable difference with {a.test_items} test items: {a.detectable:.3f} "
            f"in {a.metric} at the best's level ({a.best.mean:.3f}): between two configurations "
            f"scored independently on this many items, a smaller true difference is missed more "
            f"than {1 - confidence.POWER:.0%} of the time by a two-sided "
            f"{1 - exp.report.confidence:.0%} test{gap}"
        )
    return lines


SEARCHED = (
    "Learning-rate ranges: each method at its own validation-chosen learning rate, the one with "
    "the lowest mean validation loss over seeds (no test score decides it); the other learning "
    "rates tried are not candidates, here or in P(best)."
)


FORGOT = (
    "Forgot: a retention measure's mean change from the untuned model, counted so that more "
    "is worse (a loss's rise, an accuracy's fall); a budget's max_forgetting excludes the "
    "configurations that forgot more."
)


ADAPTIVE = (
    "Adaptive seeds (training.seeds.adaptive): after each round, the configurations still in "
    "contention with the best by P(best) on the test items got one more seed. That adds "
    "evidence where the ranking was uncertain; it does not choose the winner: the best and "
    "P(best) above are over every seed each configuration got."
)


def searched(exp: Experiment) -> bool:
    """Whether a methods entry searches its learning rate (a range: search.py)."""
    return any(m.lr_range is not None for m in exp.methods)


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
    if searched(exp):
        lines[-1] += " " + SEARCHED
    if any(a.budget.max_forgetting is not None for a in answers):
        lines[-1] += " " + FORGOT
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
            lines += how_sure(a, exp)
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
    if answers[0].seeds_why:
        lines += ["", "## Seeds per configuration", "", ADAPTIVE, ""]
        lines += [f"- {name}: {why}" for name, why in answers[0].seeds_why]
    return "\n".join(lines) + "\n"
