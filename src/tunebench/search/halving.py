"""Successive halving under a budget (the experiment's `search:`, docs/search.md).

Every configuration (a run's settings without its seed; its seeds train together) trains to
the first rung, a step of the full run; at each rung the best 1/eta of each method's
configurations, by mean validation loss, continue from their rung checkpoint to the next rung,
up to training.max_steps. Each method (a bracket: model x dataset x methods entry) gets an equal
share of the budget: that is the fairness. The budget decides how many are promoted at each
rung (at most the best 1/eta, at least one), so a larger budget only adds promotions.

The promotion is a pure function of the rung's results (`promote`), written by hand: Optuna's
SuccessiveHalvingPruner is asynchronous successive halving (ASHA). A trial that reaches a rung
is promoted if its value is in the top 1/eta of the trials that have *already* reported at that
rung, and the first eta-1 trials are promoted when best so far (optuna/pruners/
_successive_halving.py: `_get_competing_values`, `_is_trial_promotable_to_next_rung`, "Optuna
does not support suspending or resuming ongoing trials"). Its decisions depend on the order
trials report in, which a resumable DAG, whose jobs finish in any order and are rerun after a
kill, does not have. Here a rung is decided once all its results are in, and the decision is
written to a file (layout.SEARCH_DECISION), so a rerun makes the same decision.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from tunebench.matrix import RunConfig
from tunebench.spec import Experiment

# The unit each budget is counted in, as the plan shows it.
UNITS = {"steps": "optimizer steps", "gpu_hours": "GPU-hours", "money": ""}


class BudgetTooSmall(ValueError):
    """The budget cannot take every configuration to the first rung and one per method to the
    end; `key` is the budget's key and the message names the smallest budget that works."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def rung_steps(max_steps: int, eta: int, min_steps: int | None = None) -> list[int]:
    """The rungs, smallest first: max_steps / eta^k (rounded down) for every k that keeps them at
    or above min_steps (default max_steps / eta^2: three rungs); the last is max_steps."""
    low = min_steps or max(1, max_steps // eta**2)
    steps = []
    k = 0
    while max_steps // eta**k >= max(low, 1):
        steps.append(max_steps // eta**k)
        k += 1
    return sorted(set(steps))


def bracket_of(run: RunConfig) -> str:
    """The method a run competes within: one bracket per model, dataset and methods entry."""
    entry = run.label or run.method
    backend = "" if run.backend == "hf" else f" ({run.backend})"
    return f"{run.model.name} {run.dataset.name} {entry}{backend}"


def configurations(runs: list[RunConfig]) -> dict[str, list[RunConfig]]:
    """The search's candidates: runs that differ only in seed, keyed by the first seed's id."""
    grouped: dict[tuple, list[RunConfig]] = defaultdict(list)
    for run in runs:
        axes = run.axes()
        axes.pop("seed")
        grouped[tuple(sorted((k, str(v)) for k, v in axes.items()))].append(run)
    configs = {}
    for group in grouped.values():
        group.sort(key=lambda r: r.seed)
        configs[group[0].run_id] = group
    return dict(sorted(configs.items()))


@dataclass(frozen=True)
class BracketPlan:
    """One method's share: its configurations, how many reach each rung, and the cost."""

    bracket: str
    configurations: int
    counts: list[int]
    cost: float
    full_cost: float


@dataclass(frozen=True)
class Plan:
    """The whole search: rung steps, per bracket its counts, the cost against the full grid's."""

    steps: list[int]
    eta: int
    unit: str
    budget: float
    minimum: float  # the smallest budget that works
    brackets: dict[str, BracketPlan] = field(default_factory=dict)

    @property
    def cost(self) -> float:
        return sum(b.cost for b in self.brackets.values())

    @property
    def full_cost(self) -> float:
        return sum(b.full_cost for b in self.brackets.values())

    def keep(self, rung: int) -> dict[str, int]:
        """How many configurations of each bracket go on from `rung` to the next."""
        return {name: b.counts[rung + 1] for name, b in self.brackets.items()}

    def amount(self, value: float) -> str:
        """A cost in the budget's unit, as the plan prints it."""
        if self.unit == "steps":
            return f"{value:,.0f} steps"
        return f"{value:,.3g} {UNITS[self.unit] or self.unit}"


def segments(steps: list[int]) -> list[int]:
    """The steps trained between one rung and the next (the first from step 0)."""
    return [b - a for a, b in zip([0, *steps[:-1]], steps, strict=True)]


def smallest(n: int, steps: list[int]) -> int:
    """The fewest steps (of one run each) a bracket of `n` configurations can be searched in:
    all of them to the first rung, and one on to the last."""
    seg = segments(steps)
    return n * seg[0] + sum(seg[1:])


def counts_within(n: int, steps: list[int], eta: int, share: float, per_step: float) -> list[int]:
    """How many of a bracket's `n` configurations reach each rung within `share`, each costing
    `per_step` a step: all reach the first; at each later rung the best ceil(1/eta) of those
    before, or fewer (at least one) when the share left, keeping one for every later rung,
    affords fewer. Lower rungs are filled first, so a larger share never promotes fewer."""
    seg = segments(steps)
    counts, spent = [n], n * seg[0] * per_step
    for i in range(1, len(steps)):
        target = max(1, math.ceil(counts[-1] / eta))
        reserve = sum(seg[i + 1 :]) * per_step
        afford = math.floor((share - spent - reserve) / (seg[i] * per_step) + 1e-9)
        counts.append(max(1, min(target, afford)))
        spent += counts[-1] * seg[i] * per_step
    return counts


def plan(
    exp: Experiment, runs: list[RunConfig], step_costs: dict[str, float] | None = None
) -> Plan:
    """The search plan of an experiment with `search:`. `step_costs`: run id -> the cost of one
    optimizer step in the budget's unit (estimate_step_costs; None for a budget in steps).
    Raises BudgetTooSmall naming the smallest budget that works."""
    search = exp.search
    unit, budget = search.budget.unit, search.budget.amount
    steps = rung_steps(exp.training.max_steps, search.eta, search.min_steps)
    brackets: dict[str, list[list[RunConfig]]] = defaultdict(list)
    for group in configurations(runs).values():
        brackets[bracket_of(group[0])].append(group)
    costs = {}
    for name, groups in brackets.items():
        # The dearest configuration of the bracket: which ones are promoted is not known yet.
        costs[name] = max(
            sum(1.0 if step_costs is None else step_costs[r.run_id] for r in group)
            for group in groups
        )
    if not brackets:
        raise BudgetTooSmall(
            "search", "no run to search: every SFT run is continued by a dpo/orpo run"
        )
    share = budget / len(brackets)
    minimums = {
        name: smallest(len(groups), steps) * costs[name] for name, groups in brackets.items()
    }
    minimum = max(minimums.values()) * len(brackets)
    out = Plan(steps, search.eta, unit, budget, minimum)
    if share < max(minimums.values()) * (1 - 1e-9):
        raise BudgetTooSmall(
            f"search.budget.{unit}",
            f"{out.amount(budget)} is too small: every configuration to the first rung (step "
            f"{steps[0]}) and one per method on to training.max_steps ({steps[-1]}), each of the "
            f"{len(brackets)} method(s) with an equal share, needs at least {out.amount(minimum)}",
        )
    for name, groups in sorted(brackets.items()):
        counts = counts_within(len(groups), steps, search.eta, share, costs[name])
        cost = sum(c * s * costs[name] for c, s in zip(counts, segments(steps), strict=True))
        full = len(groups) * steps[-1] * costs[name]
        out.brackets[name] = BracketPlan(name, len(groups), counts, cost, full)
    return out


def estimate_step_costs(exp: Experiment, runs: list[RunConfig]) -> dict[str, float]:
    """Run id -> the predicted cost of one optimizer step in the budget's unit (GPU-hours, or
    money at cost.price_per_hour), from `tunebench estimate` on the experiment's first GPU."""
    from tunebench.estimate.runs import estimate_experiment, experiment_gpus

    unit = exp.search.budget.unit
    gpu = experiment_gpus(exp)[0]
    costs = {}
    for record in estimate_experiment(exp, runs, [gpu]):
        on_gpu = record.get("gpus", {}).get(gpu.name, {})
        value = on_gpu.get("train_hours") if unit == "gpu_hours" else on_gpu.get("cost")
        if value is None:
            why = record.get("error") or (
                f"no price for {gpu.name} in cost.price_per_hour"
                if unit == "money"
                else "no predicted step time"
            )
            raise BudgetTooSmall(
                f"search.budget.{unit}",
                f"cannot cost run {record['run_id']} on {gpu.name} ({why}); give the budget in "
                "steps, or a GPU and price the estimator knows",
            )
        costs[record["run_id"]] = value / exp.training.max_steps
    return costs


def plan_for(exp: Experiment, runs: list[RunConfig]) -> Plan:
    """The plan with the step costs its budget's unit needs (the estimator for hours and money)."""
    searched = searched_runs(exp, runs)
    costs = None if exp.search.budget.unit == "steps" else estimate_step_costs(exp, searched)
    return plan(exp, searched, costs)


def searched_runs(exp: Experiment, runs: list[RunConfig]) -> list[RunConfig]:
    """The runs of the experiment's search: every SFT run but those a dpo/orpo run continues
    (start_from needs that run whole; they and the dpo/orpo runs train in full, outside it)."""
    if exp.search is None:
        return []
    continued = {r.start_from for r in runs if r.start_from}
    return [r for r in runs if r.objective == "sft" and r.run_id not in continued]


# ---------------------------------------------------------------- the promotion decision


@dataclass(frozen=True)
class Candidate:
    """A configuration at a rung: its mean validation score over seeds, or the status of a seed
    that did not finish (then it cannot be promoted, and the others go on without it)."""

    key: str
    bracket: str
    score: float | None
    status: str = "ok"

    @property
    def eligible(self) -> bool:
        return self.status == "ok" and self.score is not None and math.isfinite(self.score)


def promote(
    candidates: list[Candidate], keep: dict[str, int], done: frozenset[str] = frozenset()
) -> dict[str, str]:
    """Candidate key -> "promoted", "pruned" or its failure status. Within each bracket the
    `keep[bracket]` eligible candidates with the lowest score are promoted (ties: the smaller
    key, so the order results arrive in never matters), plus any eligible candidate in `done`
    (it already has the next rung's result: a decision made under a smaller budget is kept,
    and nothing trained is lost). No test score, and no other bracket, takes part."""
    decided = {}
    by_bracket: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        by_bracket[candidate.bracket].append(candidate)
    for bracket, group in by_bracket.items():
        ranked = sorted((c for c in group if c.eligible), key=lambda c: (c.score, c.key))
        chosen = {c.key for c in ranked[: keep.get(bracket, 0)]}
        chosen |= {c.key for c in ranked if c.key in done}
        for c in group:  # a finished run without a finite score is pruned: it cannot rank
            promoted = "promoted" if c.key in chosen else "pruned"
            decided[c.key] = promoted if c.status == "ok" else c.status
    return decided


def candidate_at(key: str, bracket: str, results: list[dict | None]) -> Candidate:
    """A configuration from its seeds' rung results (None: not there)."""
    for result in results:
        if result is None:
            return Candidate(key, bracket, None, "missing")
        if result.get("status") != "ok":
            return Candidate(key, bracket, None, result["status"])
    scores = [r.get("validation_loss") for r in results]
    if any(s is None for s in scores):
        return Candidate(key, bracket, None, "failed")
    return Candidate(key, bracket, sum(scores) / len(scores))


# ---------------------------------------------------------------- decisions on disk


def rung_result(root, run_id: str, steps: list[int], rung: int):
    """Where a run's result at a rung is: its rung result, or its training result at the end."""
    from pathlib import Path

    from tunebench import layout

    if rung == len(steps) - 1:
        return Path(root) / layout.TRAIN_RESULT.format(run_id=run_id)
    return Path(root) / layout.RUNG_RESULT.format(run_id=run_id, step=steps[rung])


def decision_path(root, rung: int):
    from pathlib import Path

    from tunebench import layout

    return Path(root) / layout.SEARCH_DECISION.format(rung=rung)


def decide(exp: Experiment, runs: list[RunConfig], rung: int, root) -> dict:
    """The decision at `rung` from the rung results on disk: which configurations that reached
    it go on to the next rung. Reads the previous rung's decision (rung 0: every searched
    configuration) and returns what the workflow writes to layout.SEARCH_DECISION."""
    from tunebench.io import read_json

    current = plan_for(exp, runs)
    steps = current.steps
    configs = configurations(searched_runs(exp, runs))
    if rung > 0:
        before = read_json(decision_path(root, rung - 1))["promoted"]
        configs = {key: group for key, group in configs.items() if key in before}

    def read(path):
        return read_json(path) if path.is_file() else None

    candidates, done = [], set()
    for key, group in configs.items():
        results = [read(rung_result(root, r.run_id, steps, rung)) for r in group]
        candidates.append(candidate_at(key, bracket_of(group[0]), results))
        if all(rung_result(root, r.run_id, steps, rung + 1).is_file() for r in group):
            done.add(key)
    keep = current.keep(rung)
    decided = promote(candidates, keep, frozenset(done))
    return {
        "rung": rung,
        "step": steps[rung],
        "next_step": steps[rung + 1],
        "budget": exp.search.budget.model_dump(exclude_none=True),
        "eta": exp.search.eta,
        "keep": keep,
        "promoted": sorted(k for k, d in decided.items() if d == "promoted"),
        "promoted_runs": sorted(
            r.run_id for k, d in decided.items() if d == "promoted" for r in configs[k]
        ),
        "candidates": [
            {
                "configuration": c.key,
                "bracket": c.bracket,
                "run_ids": [r.run_id for r in configs[c.key]],
                exp.search.metric: c.score,
                "decision": decided[c.key],
            }
            for c in candidates
        ],
    }


def stopped(exp: Experiment, runs: list[RunConfig], root) -> dict[str, dict]:
    """Run id -> where the search stopped it: {status: pruned, step, validation_loss, reason}
    for each run a decision on disk pruned, or the rung result of a run that failed there."""
    from tunebench.io import read_json

    if exp.search is None:
        return {}
    steps = rung_steps(exp.training.max_steps, exp.search.eta, exp.search.min_steps)
    out = {}
    for rung in range(len(steps) - 1):
        path = decision_path(root, rung)
        if not path.is_file():
            break
        decision = read_json(path)
        for c in decision["candidates"]:
            if c["decision"] == "promoted":
                continue
            for run_id in c["run_ids"]:
                own = rung_result(root, run_id, steps, rung)
                result = read_json(own) if own.is_file() else {}
                if c["decision"] == "pruned":
                    kept = decision["keep"].get(c["bracket"])
                    out[run_id] = {
                        "status": "pruned",
                        "reason": f"pruned by the search at step {steps[rung]}: not among the "
                        f"best {kept} of {c['bracket']} by {exp.search.metric}",
                        "stopped_at_step": steps[rung],
                        "validation_loss": result.get("validation_loss"),
                        "result": result,
                    }
                elif result.get("status", "missing") != "ok":
                    out[run_id] = {
                        "status": result.get("status", c["decision"]),
                        "reason": f"at the search's step {steps[rung]}: "
                        + result.get("reason", "no rung result"),
                        "stopped_at_step": steps[rung],
                        "validation_loss": None,
                        "result": result,
                    }
                else:  # a seed that finished the rung while another seed did not
                    out[run_id] = {
                        "status": "skipped",
                        "reason": f"at the search's step {steps[rung]}: another seed of its "
                        f"configuration did not finish ({c['decision']})",
                        "stopped_at_step": steps[rung],
                        "validation_loss": result.get("validation_loss"),
                        "result": result,
                    }
    return out


def describe(current: Plan, max_steps: int) -> list[str]:
    """The search plan as `tunebench plan` and `estimate` print it: rungs, per method how many
    configurations reach each rung and what that costs, and the whole against the full grid."""
    share = current.budget / len(current.brackets)
    rungs = ", ".join(str(s) for s in current.steps)
    lines = [
        f"search: successive halving, eta {current.eta}, rungs at steps {rungs} "
        f"(training.max_steps {max_steps})",
        f"budget: {current.amount(current.budget)}, {current.amount(share)} per method "
        f"(the smallest that works: {current.amount(current.minimum)})",
    ]
    width = max(len(name) for name in current.brackets)
    lines.append(f"  {'method':<{width}}  configurations per rung  cost")
    for name, b in current.brackets.items():
        counts = " -> ".join(str(n) for n in b.counts)
        lines.append(f"  {name:<{width}}  {counts:<23}  {current.amount(b.cost)}")
    share_of_grid = current.cost / current.full_cost if current.full_cost else 0.0
    lines.append(
        f"search cost: {current.amount(current.cost)} at most, against "
        f"{current.amount(current.full_cost)} for the full grid ({share_of_grid:.0%})"
    )
    unspent = current.budget - current.cost
    if unspent > 1e-9 * current.budget and all(
        b.counts[i] == max(1, math.ceil(b.counts[i - 1] / current.eta))
        for b in current.brackets.values()
        for i in range(1, len(b.counts))
    ):
        lines.append(
            f"({current.amount(unspent)} of the budget is not needed: each rung keeps the best "
            f"1/{current.eta}; a smaller search.eta keeps more)"
        )
    return lines


def plan_text(exp: Experiment, runs: list[RunConfig]) -> list[str]:
    """describe(), or the budget's error as a line; [] without a search."""
    if exp.search is None:
        return []
    try:
        return describe(plan_for(exp, runs), exp.training.max_steps)
    except BudgetTooSmall as err:
        return [f"search: {err.key}: {err}"]
