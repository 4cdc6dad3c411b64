"""Does successive halving find what the full grid finds, for how much of its compute?

    python benchmarks/search_replay.py --run   # trains the grid (about 30 min on 2 busy cores)
    python benchmarks/search_replay.py         # the replays, from the grid's files (seconds)

--run trains benchmarks/data/search-replay.yaml through `tunebench run` twice: first with every
run's evaluation as the target, so every configuration trains through every rung of the search
schedule to the end (each rung a train_rung job writing its validation loss), then plainly, so
the search's decisions (everything already trained is kept) and the report are written. A
budget cannot do this: halving.counts_within keeps at most the best 1/eta at each rung.

The replays read those rung results and replay the halving offline with search/halving.py's
own rung_steps, counts_within and promote on random subsets of the configurations, presented in
random orders, each seed's logs resampled, under several budgets and schedules. Writes
benchmarks/figures/search_replay.{csv,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebench import layout, measure  # noqa: E402
from tunebench.experiment import load_experiment  # noqa: E402
from tunebench.io import read_json  # noqa: E402
from tunebench.matrix import expand  # noqa: E402
from tunebench.search import halving, lr  # noqa: E402
from tunebench.spec import SearchBudget  # noqa: E402

EXPERIMENT = "benchmarks/data/search-replay.yaml"
FIGURES = ROOT / "benchmarks" / "figures"
WALL = "replay_grid_wall.json"  # --run's wall times, beside the grid's results
CORES = 2  # what --run gives Snakemake: this project's machines have 2
TEST_METRIC = "exact_match"  # the built-in task's report metric (higher is better)
REPLAYS = 2_000  # per setting: a hit rate near 0.9 has a 95% interval of about +-0.013
# Budgets as multiples of the smallest that works; None: ample (each rung keeps the best 1/eta).
BUDGETS = (1.0, 1.5, None)
# Within seed noise: a configuration's mean over n seeds is within TIE_Z standard errors of a
# difference of two such means, sd * sqrt(2 / n), of the best (sd: pooled over seeds).
TIE_Z = 2.0


# ---------------------------------------------------------------- pure parts (tested)


def seed_sd(values: pd.DataFrame, column: str) -> float:
    """The seed noise of `column` (rows: one per run, `configuration` its key): from the median
    over configurations of the variance across a configuration's n seeds, divided by the
    median of a chi-squared with n - 1 degrees of freedom over n - 1 (what that median is for
    normal noise of variance 1). The median, not the mean: one diverged learning rate's seeds
    differ by far more than the noise near the best, and would widen every tie set."""
    groups = values.groupby("configuration")[column]
    var = groups.var(ddof=1).dropna()
    if not len(var):
        return 0.0
    df = int(groups.count().median()) - 1
    return float(math.sqrt(var.median() / (stats.chi2.median(df) / df)))


def tie_set(means: dict[str, float], sd: float, seeds: int, lower_is_better: bool) -> set[str]:
    """The configurations within seed noise of the best: a mean over `seeds` seeds at most
    TIE_Z * sd * sqrt(2 / seeds) worse than the best mean."""
    sign = 1.0 if lower_is_better else -1.0
    best = min(sign * m for m in means.values())
    margin = TIE_Z * sd * math.sqrt(2.0 / seeds)
    return {key for key, m in means.items() if sign * m - best <= margin + 1e-12}


def steps_spent(reached: list[int], steps: list[int], seeds: int) -> int:
    """Optimizer steps a search spent: `reached[i]` configurations trained from the rung
    before to rung i (steps[i]), each with `seeds` runs."""
    return sum(n * s * seeds for n, s in zip(reached, halving.segments(steps), strict=True))


def job_seconds(
    reached: list[int], steps: list[int], seeds: int, fit: tuple[float, float]
) -> float:
    """Train jobs' seconds under the fit seconds = a + b * steps of one job: one job per run
    and rung segment (each job starts a process and loads a checkpoint: the a)."""
    a, b = fit
    segs = halving.segments(steps)
    return sum(n * seeds * (a + b * s) for n, s in zip(reached, segs, strict=True))


def replay(
    scores: dict[str, dict[int, float]],
    brackets: dict[str, str],
    steps: list[int],
    counts: dict[str, list[int]],
    order: list[str],
) -> tuple[dict[str, str], dict[str, list[int]]]:
    """Successive halving on logged scores with halving.promote: `scores[key][step]` (lower is
    better), `counts[bracket]` how many the plan takes to each rung, candidates presented in
    `order`. Returns each bracket's winner (the lowest score at the last rung among those that
    reached it) and per bracket how many configurations reached each rung."""
    alive = list(order)

    def tally(keys):
        return {b: sum(brackets[k] == b for k in keys) for b in counts}

    reached = {b: [n] for b, n in tally(alive).items()}
    for rung in range(len(steps) - 1):
        candidates = [halving.Candidate(k, brackets[k], scores[k][steps[rung]]) for k in alive]
        keep = {b: c[rung + 1] for b, c in counts.items()}
        decided = halving.promote(candidates, keep)
        alive = [k for k in alive if decided[k] == "promoted"]
        for b, n in tally(alive).items():
            reached[b].append(n)
    winners: dict[str, str] = {}
    for key in alive:
        b = brackets[key]
        if b not in winners or (scores[key][steps[-1]], key) < (
            scores[winners[b]][steps[-1]],
            winners[b],
        ):
            winners[b] = key
    return winners, reached


# ---------------------------------------------------------------- the grid's files


def run_grid(experiment: str) -> None:
    """Train every run through every rung to the end and evaluate it (the first call's targets),
    then let the workflow make its decisions and the report; both wall times are kept."""
    exp = load_experiment(experiment)
    root = layout.results_root(exp.name)
    targets = [str(root / layout.EVAL_RESULT.format(run_id=r.run_id)) for r in expand(exp)]
    wall = {}
    # The first call builds no table: --omit-from says so, and tunebench run then exits 0.
    calls = (("grid", [*targets, "--omit-from", "compile"]), ("decisions_and_report", []))
    for name, extra in calls:
        start = time.perf_counter()
        code = subprocess.call(
            ["tunebench", "run", experiment, "--", "--cores", str(CORES), *extra]
        )
        wall[f"{name}_seconds"] = time.perf_counter() - start
        if code:
            sys.exit(f"tunebench run {experiment} exited {code}")
    # Whether other work shared the cores while the grid trained.
    wall["load_average_15min"] = os.getloadavg()[2]
    (root / WALL).write_text(json.dumps(wall, indent=2) + "\n")


def job_fit(root: Path) -> tuple[tuple[float, float], float, int]:
    """Seconds of a train job against the steps it trained, fit by least squares over every
    train and train_rung job of the grid (Snakemake's benchmark files); and the mean seconds of
    an evaluation job, and how many train jobs the fit saw."""
    rows = []
    for rule in ("train", "train_rung"):
        for path in (root / "benchmarks" / rule).glob("*.tsv"):
            result_path = root / (
                layout.TRAIN_RESULT.format(run_id=path.stem)
                if rule == "train"
                else layout.RUNG_RESULT.format(
                    run_id=path.stem.rsplit(".step-", 1)[0], step=path.stem.rsplit("-", 1)[1]
                )
            )
            result = read_json(result_path)
            start = result.get("resumed_from_step") or 0
            end = result.get("rung_step") or result["steps"]
            rows.append((end - start, float(pd.read_csv(path, sep="\t")["s"].iloc[0])))
    x, y = np.array(rows).T
    b, a = np.polyfit(x, y, 1)
    evals = [
        float(pd.read_csv(p, sep="\t")["s"].iloc[0])
        for p in (root / "benchmarks" / "evaluate").glob("*.tsv")
    ]
    return (float(a), float(b)), float(np.mean(evals)), len(rows)


@dataclass
class Grid:
    exp: object
    runs: dict  # run id -> RunConfig
    configs: dict[str, list]  # configuration key -> its runs (seeds)
    brackets: dict[str, str]  # configuration key -> bracket
    logs: dict[str, dict[int, float]]  # run id -> rung step -> validation loss
    table: pd.DataFrame  # one row per run: configuration, bracket, seed, final val, test
    steps: list[int]


def load_grid(experiment: str) -> Grid:
    exp = load_experiment(experiment)
    root = layout.results_root(exp.name)
    searched = halving.searched_runs(exp, expand(exp))
    steps = halving.rung_steps(exp.training.max_steps, exp.search.eta, exp.search.min_steps)
    configs = halving.configurations(searched)
    brackets = {key: halving.bracket_of(group[0]) for key, group in configs.items()}
    logs, rows = {}, []
    for key, group in configs.items():
        for run in group:
            logs[run.run_id] = {}
            for rung, step in enumerate(steps):
                result = read_json(halving.rung_result(root, run.run_id, steps, rung))
                logs[run.run_id][step] = result.get("validation_loss", math.nan)
            scored = read_json(root / layout.EVAL_RESULT.format(run_id=run.run_id))
            rows.append(
                {
                    "configuration": key,
                    "bracket": brackets[key],
                    "method": run.method,
                    "rank": run.rank,
                    "group": run.method + (f" r{run.rank}" if run.rank else ""),
                    "learning_rate": run.learning_rate,
                    "seed": run.seed,
                    "run_id": run.run_id,
                    "validation_loss": logs[run.run_id][steps[-1]],
                    TEST_METRIC: scored.get(TEST_METRIC, math.nan),
                }
            )
    return Grid(
        exp, {r.run_id: r for r in searched}, configs, brackets, logs, pd.DataFrame(rows), steps
    )


# ---------------------------------------------------------------- the replays


def truths(grid: Grid) -> dict:
    """Per scope (each bracket, and "overall"): the seed noise of the final validation loss and
    of the test metric, from the whole grid."""
    out = {}
    scopes = {b: grid.table[grid.table.bracket == b] for b in sorted(set(grid.brackets.values()))}
    scopes["overall"] = grid.table
    for scope, rows in scopes.items():
        out[scope] = {
            "validation": seed_sd(rows, "validation_loss"),
            "test": seed_sd(rows, TEST_METRIC),
        }
    return out


PLANS: dict[tuple, dict[str, list[int]]] = {}


def plan_counts(grid: Grid, keys: list[str], eta: int, min_steps: int, factor: float | None):
    """halving.plan's counts per bracket for the configurations `keys` under a budget `factor` x
    the smallest. Every configuration of the grid costs the same per step (its seeds), so a plan
    depends only on how many each bracket has: it is cached on that."""
    sizes = tuple(sorted(Counter(grid.brackets[k] for k in keys).items()))
    cached = PLANS.get((eta, min_steps, factor, sizes))
    if cached is None:
        current = plan_of(grid, keys, eta, min_steps, factor)
        cached = {b: p.counts for b, p in current.brackets.items()}
        PLANS[(eta, min_steps, factor, sizes)] = cached
    return cached


def plan_of(grid: Grid, keys: list[str], eta: int, min_steps: int, factor: float | None):
    runs = [r for k in keys for r in grid.configs[k]]
    search = grid.exp.search.model_copy(
        update={
            "eta": eta,
            "min_steps": min_steps,
            # The grid's own cost: more than any search of it can spend.
            "budget": SearchBudget(steps=len(runs) * grid.exp.training.max_steps),
        }
    )
    exp = grid.exp.model_copy(update={"search": search})
    ample = halving.plan(exp, runs)
    if factor is None:
        return ample
    budget = SearchBudget(steps=math.ceil(factor * ample.minimum))
    return halving.plan(
        exp.model_copy(update={"search": search.model_copy(update={"budget": budget})}), runs
    )


def schedules(grid: Grid) -> list[tuple[int, int, list[int]]]:
    """The schedules replayed: (eta, min_steps, rungs) for the grid's eta and its square, from
    each logged rung but the last, where every rung is one the grid logged and there are two
    or more."""
    eta, out = grid.exp.search.eta, {}
    for e in (eta, eta**2):
        for low in grid.steps[:-1]:
            steps = halving.rung_steps(grid.exp.training.max_steps, e, low)
            if len(steps) > 1 and set(steps) <= set(grid.steps):
                out.setdefault(tuple(steps), (e, low, steps))
    return list(out.values())


def setting(eta: int, steps: list[int], factor: float | None) -> dict:
    """A replay's schedule and budget, as the figure's first columns show them."""
    return {
        "eta": eta,
        "rungs": "/".join(str(s) for s in steps),
        "budget": "ample" if factor is None else f"{factor:g}x smallest",
    }


def replays(grid: Grid, fit, eval_seconds: float, n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    noise = truths(grid)
    seeds = len(grid.exp.training.seeds)
    by_bracket: dict[str, list[str]] = {}
    for key, b in grid.brackets.items():
        by_bracket.setdefault(b, []).append(key)
    means = grid.table.groupby("configuration")[["validation_loss", TEST_METRIC]].mean()
    val_means, test_means = means.validation_loss.to_dict(), means[TEST_METRIC].to_dict()
    rows = []
    for eta, min_steps, steps in schedules(grid):
        for factor in BUDGETS:
            for trial in range(n):
                # A random subset of each method's configurations (at least 3), in random order.
                keys = []
                for members in by_bracket.values():
                    size = int(rng.integers(min(3, len(members)), len(members) + 1))
                    keys += list(rng.choice(members, size=size, replace=False))
                order = [keys[i] for i in rng.permutation(len(keys))]
                # Each configuration's seeds resampled: what the search sees is their mean.
                scores = {}
                for key in keys:
                    drawn = rng.integers(0, seeds, size=seeds)
                    ids = [grid.configs[key][i].run_id for i in drawn]
                    scores[key] = {s: sum(grid.logs[i][s] for i in ids) / len(ids) for s in steps}
                counts = plan_counts(grid, keys, eta, min_steps, factor)
                winners, reached = replay(scores, grid.brackets, steps, counts, order)
                reached["overall"] = [sum(r) for r in zip(*reached.values(), strict=True)]
                overall = min(winners.values(), key=lambda k: (scores[k][steps[-1]], k))
                for scope, winner in [*winners.items(), ("overall", overall)]:
                    members = (
                        keys
                        if scope == "overall"
                        else [k for k in keys if grid.brackets[k] == scope]
                    )
                    spent = steps_spent(reached[scope], steps, seeds)
                    full = steps_spent([len(members)], [steps[-1]], seeds)
                    seconds = job_seconds(reached[scope], steps, seeds, fit)
                    seconds += reached[scope][-1] * seeds * eval_seconds
                    full_seconds = job_seconds([len(members)], [steps[-1]], seeds, fit)
                    full_seconds += len(members) * seeds * eval_seconds
                    val = {k: val_means[k] for k in members}
                    test = {k: test_means[k] for k in members}
                    val_ties = tie_set(val, noise[scope]["validation"], seeds, lower_is_better=True)
                    test_ties = tie_set(test, noise[scope]["test"], seeds, lower_is_better=False)
                    rows.append(
                        {
                            **setting(eta, steps, factor),
                            "scope": scope,
                            "trial": trial,
                            "configurations": len(members),
                            "winner_is_best_validation": winner
                            == min(val, key=lambda k: (val[k], k)),
                            "in_validation_ties": winner in val_ties,
                            "validation_ties_share": len(val_ties) / len(members),
                            "in_test_ties": winner in test_ties,
                            "test_ties_share": len(test_ties) / len(members),
                            "steps_share": spent / full,
                            "job_seconds_share": seconds / full_seconds,
                        }
                    )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the figures


def label(grid: Grid, key: str) -> str:
    run = grid.configs[key][0]
    rank = f" r{run.rank}" if run.rank else ""
    return f"{run.method}{rank} lr {run.learning_rate:.3g}"


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per schedule, budget and scope: the replays' rates and mean shares."""
    keys = ["eta", "rungs", "budget", "scope"]
    scopes = sorted(set(rows.scope) - {"overall"}) + ["overall"]
    rows = rows.assign(scope=pd.Categorical(rows.scope, scopes, ordered=True))
    out = rows.groupby(keys, sort=False, observed=True).agg(
        replays=("trial", "size"),
        configurations=("configurations", "mean"),
        in_validation_ties=("in_validation_ties", "mean"),
        random_in_validation_ties=("validation_ties_share", "mean"),
        in_test_ties=("in_test_ties", "mean"),
        random_in_test_ties=("test_ties_share", "mean"),
        winner_is_best=("winner_is_best_validation", "mean"),
        steps_share=("steps_share", "mean"),
        job_seconds_share=("job_seconds_share", "mean"),
    )
    out = out.reset_index()
    order = {s: i for i, s in enumerate(scopes)}
    out["_order"] = out.scope.map(order).astype(int)
    out["_setting"] = out.groupby(["eta", "rungs", "budget"], sort=False).ngroup()
    out = out.sort_values(["_setting", "_order"], kind="stable")
    out["scope"] = out.scope.astype(str)
    return out.drop(columns=["_order", "_setting"])


def tie_lines(grid: Grid) -> list[str]:
    """The whole grid's tie sets, per scope, on validation and on test."""
    noise = truths(grid)
    seeds = len(grid.exp.training.seeds)
    means = grid.table.groupby("configuration")[["validation_loss", TEST_METRIC]].mean()
    lines = [
        "| scope | configurations | seed sd (validation loss) | validation tie set | "
        f"seed sd ({TEST_METRIC}) | test tie set |",
        "|---|---|---|---|---|---|",
    ]
    for scope, sd in noise.items():
        members = [k for k in grid.configs if scope == "overall" or grid.brackets[k] == scope]
        val = tie_set(
            {k: means.loc[k, "validation_loss"] for k in members}, sd["validation"], seeds, True
        )
        test = tie_set({k: means.loc[k, TEST_METRIC] for k in members}, sd["test"], seeds, False)
        lines.append(
            f"| {scope} | {len(members)} | {sd['validation']:.4f} | "
            f"{', '.join(sorted(label(grid, k) for k in val))} | {sd['test']:.4f} | "
            f"{', '.join(sorted(label(grid, k) for k in test))} |"
        )
    return lines


def fairness(grid: Grid) -> tuple[list[str], str]:
    """Each (method, rank) at a learning rate every one of them tried, against each at its own
    learning rate chosen on validation (search/lr.py's rule): the ranking on the test metric."""
    per = grid.table.groupby(["group", "learning_rate"])[["validation_loss", TEST_METRIC]].agg(
        ["mean", "count"]
    )
    groups: dict[str, dict[float, tuple[float, float, int]]] = {}
    for (group, rate), row in per.iterrows():
        groups.setdefault(group, {})[rate] = (
            row[("validation_loss", "mean")],
            row[(TEST_METRIC, "mean")],
            int(row[("validation_loss", "count")]),
        )
    seeds = len(grid.exp.training.seeds)
    tuned = {}
    for group, rates in groups.items():
        points = [lr.point(r, "ok", seeds, n, v) for r, (v, _, n) in rates.items()]
        tuned[group] = lr.best(points).learning_rate
    shared = [
        r
        for r in next(iter(groups.values()))
        if all(any(math.isclose(r, q) for q in g) for g in groups.values())
    ]

    def at(group, rate):
        return next(v for q, v in groups[group].items() if math.isclose(q, rate))

    def ranking(rates: dict) -> list[str]:
        return sorted(groups, key=lambda g: -at(g, rates[g])[1])

    def name(g):
        return g

    settings = {"each at its own tuned learning rate": tuned}
    for rate in shared:
        settings[f"all at {rate:.3g}"] = dict.fromkeys(groups, rate)
    lines = [
        f"| learning rates | ranking by {TEST_METRIC} (mean over seeds; learning rate) |",
        "|---|---|",
    ]
    orders = {}
    for setting, rates in settings.items():
        order = ranking(rates)
        orders[setting] = [name(g) for g in order]
        cells = ", ".join(f"{name(g)} {at(g, rates[g])[1]:.3f} ({rates[g]:.3g})" for g in order)
        lines.append(f"| {setting} | {cells} |")
    base = orders["each at its own tuned learning rate"]
    flips = [s for s, o in orders.items() if o != base]
    verdict = (
        "The ranking flips between "
        + "; ".join(f"{s} ({' > '.join(orders[s])})" for s in flips)
        + f" and each method at its own tuned learning rate ({' > '.join(base)})."
        if flips
        else "No ranking flips: each shared learning rate ranks them as their tuned rates do."
    )
    margin = TIE_Z * seed_sd(grid.table, TEST_METRIC) * math.sqrt(2.0 / seeds)
    verdict += (
        f" Two means over {seeds} seeds closer than {margin:.3f} ({TIE_Z:g} standard errors of "
        "their difference, the grid's seed sd) are within seed noise."
    )
    if not shared:
        verdict = "No learning rate was tried by every method: no shared-rate comparison."
    return lines, verdict


def stem_of(exp) -> str:
    """The figure's file name: search_replay for the built-in grid, search_replay-<rest> for
    another (search-replay-smollm2: search_replay-smollm2)."""
    rest = exp.name.removeprefix("search-replay").lstrip("-")
    return "search_replay" + (f"-{rest}" if rest else "")


def write(
    grid: Grid, rows: pd.DataFrame, fit, eval_seconds: float, jobs: int, out: Path, experiment: str
) -> None:
    root = layout.results_root(grid.exp.name)
    table = summary(rows)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem_of(grid.exp)
    table.to_csv(out / f"{stem}.csv", index=False)
    wall_path = root / WALL
    wall = read_json(wall_path) if wall_path.is_file() else {}
    seeds = len(grid.exp.training.seeds)
    shown = table.assign(
        **{
            c: table[c].map(percent)
            for c in (
                "in_validation_ties",
                "random_in_validation_ties",
                "in_test_ties",
                "random_in_test_ties",
                "winner_is_best",
                "steps_share",
                "job_seconds_share",
            )
        },
        configurations=table.configurations.map(lambda x: f"{x:.1f}"),
    )
    shown.columns = [
        "eta",
        "rungs",
        "budget",
        "method",
        "replays",
        "configurations",
        "winner in validation tie set",
        "validation ties by chance",
        "winner in test tie set",
        "test ties by chance",
        "winner the best on validation",
        "share of the grid's steps",
        "share of the grid's job-seconds",
    ]
    goals = []
    for rungs, lines in table[table.scope == "overall"].groupby("rungs", sort=False):
        hit, cost = lines.in_validation_ties.min(), lines.steps_share.max()
        goals.append(
            f"- rungs {rungs} (eta {lines.eta.iloc[0]}): overall winner in the validation tie "
            f"set in {percent(hit)} of replays at worst ({'met' if hit >= 0.9 else 'NOT met'}), "
            f"share of the grid's steps {percent(cost)} at most "
            f"({'met' if cost <= 0.35 else 'NOT met'})"
        )
    tie_rows, verdict = fairness(grid)
    lines = [
        "# Successive halving replayed on a full grid",
        "",
        f"Measured {measure.measured_on()} by `python benchmarks/search_replay.py` "
        f"(the grid: `python benchmarks/search_replay.py --run --experiment {experiment}`).",
        "",
        f"The grid: {len(grid.configs)} configurations ({grid.table.bracket.nunique()} methods) x "
        f"{seeds} seeds = {len(grid.table)} runs of {grid.exp.training.max_steps} steps, each "
        f"validated at steps {', '.join(str(s) for s in grid.steps)}"
        + (
            f"; trained and evaluated in {wall['grid_seconds']:.0f} s wall time on this machine "
            f"({CORES // grid.exp.resources.threads} at a time on {CORES} cores"
            + (
                f", 15-minute load average {wall['load_average_15min']:.1f} at the end"
                if "load_average_15min" in wall
                else ""
            )
            + f"), decisions and report {wall['decisions_and_report_seconds']:.0f} s."
            if wall
            else "."
        ),
        "",
        f"Each line: {rows.trial.nunique():,} replays of search/halving.py's own `plan` and "
        "`promote` on the grid's logged validation losses, each on a random subset of every "
        "method's "
        "configurations (at least 3), presented in a random order, each configuration's seeds "
        "resampled with replacement (the search ranks their mean). A method's winner is the "
        "configuration with the lowest validation loss among those the search took to the end; "
        "the overall winner the lowest of those. **Tie set**: the configurations of that subset "
        f"whose mean over the {seeds} seeds of the whole grid is within {TIE_Z:g} standard errors "
        f"of a difference of two such means (seed sd x sqrt(2/{seeds})) of the best, the seed sd "
        "estimated from the median over the configurations of that method (overall: of all) "
        "of the variance across seeds (robust to a diverged learning rate); on the final "
        f"validation loss, and on the test {TEST_METRIC}. *By chance*: the share of "
        "configurations in the tie set, i.e. how often a configuration picked at random would "
        "be in it. Budgets: a multiple of the smallest that works (halving.plan's minimum), or "
        "ample (each rung keeps the best 1/eta). Shares: the search's optimizer steps (seeds "
        "each count) against the grid's; job-seconds: every train job costed by a least-squares "
        f"fit over the grid's {jobs} train jobs, seconds = {fit[0]:.2f} + {fit[1]:.4f} x steps "
        "(a job's start is the intercept, and a search starts one job per rung), plus "
        f"{eval_seconds:.1f} s per evaluated run, against the grid as plain one-job runs.",
        "",
        shown.to_markdown(index=False),
        "",
        "Goals (issue 26): the winner in the tie set in >= 90% of replays, for <= 35% of the "
        "grid's compute; per schedule, over its budgets:",
        "",
        *goals,
        "",
        "## The whole grid's tie sets",
        "",
        *tie_lines(grid),
        "",
        "## A shared learning rate against each method's own",
        "",
        "Test scores of the whole grid (mean over seeds); the tuned rate is chosen on "
        "validation loss (search/lr.py's rule), a shared rate is one every method tried.",
        "",
        *tie_rows,
        "",
        verdict,
        "",
    ]
    (out / f"{stem}.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="train the grid first")
    parser.add_argument("--experiment", default=EXPERIMENT)
    parser.add_argument("--replays", type=int, default=REPLAYS)
    parser.add_argument("--out", type=Path, default=FIGURES)
    args = parser.parse_args()
    if args.run:
        run_grid(args.experiment)
    grid = load_grid(args.experiment)
    fit, eval_seconds, jobs = job_fit(layout.results_root(grid.exp.name))
    rows = replays(grid, fit, eval_seconds, args.replays)
    write(grid, rows, fit, eval_seconds, jobs, args.out, args.experiment)
    print((args.out / f"{stem_of(grid.exp)}.md").read_text())


if __name__ == "__main__":
    main()
