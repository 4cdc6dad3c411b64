"""Successive halving replayed on a published sweep: would it have found what the whole sweep
found, for how much of its compute?

    python benchmarks/search_replay_published.py   # seconds; no training

The sweep: PEFT's MetaMathQA method comparison (github.com/huggingface/peft,
method_comparison/MetaMathQA, results at commit 5d602fdbff): 63 configurations of 37 PEFT
methods and full fine-tuning, each fine-tuning meta-llama/Llama-3.2-3B for 5,000 steps,
validated every 250 steps on 50 GSM8K-train questions and tested at the end on the 1,319
GSM8K test questions, one seed each (benchmarks/data/peft-metamathqa-curves.csv, written by
benchmarks/peft_curves.py with each value's source file).

Each replay draws a random subset of the configurations (a sweep someone might run), in a
random order, and runs search/halving.py's own promote (through search_replay.replay) on their
logged validation accuracies, with counts_within's rung counts under a budget, as one bracket:
the question the sweep answers is which configuration to use. The winner is then judged on
test. How much a rerun moves a result comes from the older snapshots of the same files (the
same configuration and seed, rerun with other library versions): the tie sets use it as the
seed noise, search_replay's rule.

Writes benchmarks/figures/search_replay-peft-metamathqa.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import search_replay as grid_replay  # noqa: E402
from peft_curves import OUT as CURVES  # noqa: E402
from peft_curves import REPLAYED  # noqa: E402

from tunebench.search import halving  # noqa: E402

FIGURES = ROOT / "benchmarks" / "figures"
ETAS = (2, 4, 5, 10, 20)  # those whose rungs (5,000 / eta^k) fall on steps the sweep validated
BUDGETS = (1.0, 1.5, None)  # x the smallest that works; None: ample (the best 1/eta each rung)
SMALLEST_SWEEP = 9  # a replayed sweep has at least this many configurations
BRACKET = "all"


def curve_of(pairs: str) -> dict[int, float]:
    """Validated step -> validation accuracy, from peft_curves' "step:accuracy" pairs."""
    return {int(step): float(acc) for step, acc in (pair.split(":") for pair in pairs.split())}


def curves(table: pd.DataFrame) -> dict[str, dict[int, float]]:
    """experiment -> its validation curve (one snapshot's rows: an experiment is one row)."""
    return dict(zip(table.experiment, map(curve_of, table.valid_accuracy_by_step), strict=True))


def replayed(table: pd.DataFrame) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """The replayed snapshot's validation curves and test accuracies, by experiment."""
    sweep = table[table.commit == REPLAYED]
    return curves(sweep), dict(zip(sweep.experiment, sweep.test_accuracy, strict=True))


def rerun_noise(table: pd.DataFrame) -> dict[str, float]:
    """How much a rerun moves the final validation and the test accuracy: search_replay's seed
    noise (the median over configurations of their variance across snapshots) over the
    configurations found in two or more snapshots."""
    runs = table.assign(
        configuration=table.experiment,
        validation=[c[max(c)] for c in map(curve_of, table.valid_accuracy_by_step)],
    )
    runs = runs[runs.groupby("experiment").commit.transform("nunique") > 1]
    return {
        "validation": grid_replay.seed_sd(runs, "validation"),
        "test": grid_replay.seed_sd(runs, "test_accuracy"),
        "configurations": runs.experiment.nunique(),
    }


def schedules(steps: list[int], max_steps: int) -> list[tuple[int, int, list[int]]]:
    """(eta, min_steps, rungs) for each eta whose halving.rung_steps are all validated steps, from
    each validated step but the last; one per distinct set of rungs."""
    out: dict[tuple, tuple] = {}
    for eta in ETAS:
        for low in steps[:-1]:
            rungs = halving.rung_steps(max_steps, eta, low)
            if len(rungs) > 1 and set(rungs) <= set(steps):
                out.setdefault(tuple(rungs), (eta, low, rungs))
    return list(out.values())


def counts(n: int, rungs: list[int], eta: int, factor: float | None) -> list[int]:
    """halving.counts_within for one bracket of `n` configurations of one seed each, a step
    costing 1: the smallest budget that works is all to the first rung and one to the end."""
    share = n * rungs[-1] if factor is None else factor * halving.smallest(n, rungs)
    return halving.counts_within(n, rungs, eta, share, 1.0)


def replays(table: pd.DataFrame, n: int, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    logs, test = replayed(table)
    max_steps = int(table[table.commit == REPLAYED].max_steps.iloc[0])
    steps = sorted(set.intersection(*(set(c) for c in logs.values())))
    noise = rerun_noise(table)
    # Halving ranks the lowest first: the accuracies negated.
    scores = {k: {s: -a for s, a in c.items()} for k, c in logs.items()}
    names = sorted(logs)
    rows = []
    for eta, _, rungs in schedules(steps, max_steps):
        for factor in BUDGETS:
            for trial in range(n):
                size = int(rng.integers(SMALLEST_SWEEP, len(names) + 1))
                keys = list(rng.choice(names, size=size, replace=False))
                # promote breaks ties by key, as a search does by run id (a hash): each replay
                # names the configurations at random, so no name wins ties throughout.
                alias = dict(zip(keys, (f"{i:02d}" for i in rng.permutation(size)), strict=True))
                named = {alias[k]: scores[k] for k in keys}
                order = [alias[keys[i]] for i in rng.permutation(size)]
                plan = {BRACKET: counts(size, rungs, eta, factor)}
                brackets = dict.fromkeys(named, BRACKET)
                winners, reached = grid_replay.replay(named, brackets, rungs, plan, order)
                winner = next(k for k in keys if alias[k] == winners[BRACKET])
                final = {k: logs[k][max_steps] for k in keys}
                tested = {k: test[k] for k in keys}
                val_ties = grid_replay.tie_set(final, noise["validation"], 1, lower_is_better=False)
                test_ties = grid_replay.tie_set(tested, noise["test"], 1, lower_is_better=False)
                # The whole sweep's own choice: the best final validation accuracy (ties: the
                # smaller alias, as promote breaks them).
                own = min(keys, key=lambda k: (-final[k], alias[k]))
                rows.append(
                    {
                        **grid_replay.setting(eta, rungs, factor),
                        "trial": trial,
                        "configurations": size,
                        "in_test_ties": winner in test_ties,
                        "test_ties_share": len(test_ties) / size,
                        "sweep_choice_in_test_ties": own in test_ties,
                        "in_validation_ties": winner in val_ties,
                        "validation_ties_share": len(val_ties) / size,
                        "steps_share": grid_replay.steps_spent(reached[BRACKET], rungs, 1)
                        / (size * max_steps),
                    }
                )
    return pd.DataFrame(rows), {**noise, "steps": steps, "max_steps": max_steps}


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.groupby(["eta", "rungs", "budget"], sort=False).agg(
        replays=("trial", "size"),
        configurations=("configurations", "mean"),
        in_test_ties=("in_test_ties", "mean"),
        random_in_test_ties=("test_ties_share", "mean"),
        sweep_choice_in_test_ties=("sweep_choice_in_test_ties", "mean"),
        in_validation_ties=("in_validation_ties", "mean"),
        random_in_validation_ties=("validation_ties_share", "mean"),
        steps_share=("steps_share", "mean"),
    )
    return out.reset_index()


def write(table: pd.DataFrame, rows: pd.DataFrame, noise: dict, out: Path) -> Path:
    lines_of = summary(rows)
    shown = lines_of.assign(
        configurations=lines_of.configurations.round(1),
        **{
            c: lines_of[c].map(grid_replay.percent)
            for c in (
                "in_test_ties",
                "random_in_test_ties",
                "sweep_choice_in_test_ties",
                "in_validation_ties",
                "random_in_validation_ties",
                "steps_share",
            )
        },
    ).rename(
        columns={
            "in_test_ties": "winner in test tie set",
            "random_in_test_ties": "test ties by chance",
            "sweep_choice_in_test_ties": "whole sweep's choice in test tie set",
            "in_validation_ties": "winner in validation tie set",
            "random_in_validation_ties": "validation ties by chance",
            "steps_share": "share of the sweep's steps",
        }
    )
    logs, test = replayed(table)
    final = {k: c[max(c)] for k, c in logs.items()}
    test_ties = grid_replay.tie_set(test, noise["test"], 1, lower_is_better=False)
    val_ties = grid_replay.tie_set(final, noise["validation"], 1, lower_is_better=False)
    top = max(final.values())
    best_val = sorted(k for k, v in final.items() if v == top)
    test_margin = grid_replay.TIE_Z * noise["test"] * math.sqrt(2)
    val_margin = grid_replay.TIE_Z * noise["validation"] * math.sqrt(2)
    lines = [
        "# Successive halving replayed on a published sweep: PEFT's MetaMathQA comparison",
        "",
        f"Replayed {datetime.date.today().isoformat()} (no training: nothing here depends "
        "on the machine). Command: `python benchmarks/search_replay_published.py` (the data: "
        "`benchmarks/data/peft-metamathqa-curves.csv`, from `python benchmarks/peft_curves.py "
        "PEFT_GIT_DIR`, each row with its source file).",
        "",
        f"The sweep: {len(test)} configurations of github.com/huggingface/peft "
        f"`method_comparison/MetaMathQA/results/*.json` at commit {REPLAYED[:10]}: "
        f"meta-llama/Llama-3.2-3B fine-tuned for {noise['max_steps']:,} steps, validation "
        f"accuracy on 50 GSM8K-train questions every {noise['steps'][0]} steps, test accuracy "
        "on the 1,319 GSM8K test questions at the end, one seed each.",
        "",
        f"Each line: {int(lines_of.replays.iloc[0]):,} replays of search/halving.py's own "
        "`counts_within` and `promote` (one bracket: which configuration to use) on the logged "
        f"validation accuracies of a random subset of the configurations ({SMALLEST_SWEEP} to "
        "all), in a random order. Ties in validation accuracy (50 questions: steps of 0.02) go "
        "to the smaller name, as promote breaks them, and each replay names the configurations "
        "at random (a search's names are run ids, hashes). **Tie set**: the configurations of "
        f"that subset within {grid_replay.TIE_Z:g} standard errors of a difference (rerun sd x "
        "sqrt(2)) of the best, on test accuracy and on the final validation accuracy. "
        "**Rerun sd**: how much the same configuration and seed moved between this snapshot "
        "and older ones (rerun with other library versions: commits a99942694e and "
        f"a475f56c81), the median over the {noise['configurations']} configurations found in "
        f"two or more snapshots of their variance: {noise['test']:.4f} on test "
        f"({test_margin:.3f} the tie margin), {noise['validation']:.4f} on validation "
        f"({val_margin:.3f}). A different seed would likely move them more, so these tie sets "
        "are narrow. *Whole sweep's choice*: the configuration with the best final validation "
        "accuracy among the subset, every one trained to the end: what the sweep without a "
        "search would choose.",
        "",
        shown.to_markdown(index=False),
        "",
        "## The whole sweep",
        "",
        f"- Test tie set ({len(test_ties)} of {len(test)}): "
        + ", ".join(f"{k} {test[k]:.3f}" for k in sorted(test_ties, key=lambda k: (-test[k], k))),
        f"- Validation tie set: {len(val_ties)} of {len(test)} configurations within "
        "the validation tie margin of the best (50 questions separate few of them).",
        f"- The best final validation accuracy, {top:.2f}: "
        + ", ".join(
            f"{k} (test {test[k]:.3f}, {'in' if k in test_ties else 'NOT in'} the test tie set)"
            for k in best_val
        )
        + ".",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "search_replay-peft-metamathqa.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replays", type=int, default=grid_replay.REPLAYS)
    parser.add_argument("--out", type=Path, default=FIGURES)
    args = parser.parse_args()
    table = pd.read_csv(CURVES)
    rows, noise = replays(table, args.replays)
    print(write(table, rows, noise, args.out).read_text())


if __name__ == "__main__":
    main()
