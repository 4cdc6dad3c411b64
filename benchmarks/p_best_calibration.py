"""Is the stated P(best) calibrated? On synthetic ground truth, configurations with known true
means: of all the configurations given P(best) near p, is about a share p of them really best?

Each trial draws k configurations and a test set of n items. Item i has a difficulty d_i, each
configuration an ability a_c and each of its trained seeds an offset e_cs (a rerun's luck);
seed s of configuration c answers item i right with probability sigmoid(a_c + e_cs - d_i). A
configuration's true mean over the item population and over reruns rises with a_c alone, so the
really best is the one of highest ability; a trained run's own true mean rises with a_c + e_cs.
Both estimators of tunebench.reporting.confidence are scored on the same trials: p_best (the
hierarchical posterior the recommendation states) and bootstrap_p_best (the paired bootstrap it
replaced), and every (stated P(best), really best?) pair is binned.

    python benchmarks/p_best_calibration.py                # a few minutes on 2 cores

Writes benchmarks/figures/p_best_calibration.{csv,md}. The result depends on the prior the
trials are drawn from (the abilities' spread, the seed noise): it is stated with the figures.
"""

from __future__ import annotations

import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebench import measure  # noqa: E402
from tunebench.reporting.confidence import bootstrap_p_best, p_best  # noqa: E402

FIGURES = ROOT / "benchmarks" / "figures"
TRIALS = 1_000  # per scenario: a bin of 100 pairs has a 95% interval of about +-0.1 at worst
DRAWS = 1_000  # posterior draws or bootstrap resamples per trial (Monte Carlo error <= 0.016)
DIFFICULTY_SD = 1.5  # items from easy to hard
BINS = np.linspace(0.0, 1.0, 11)
MIN_PAIRS = 30  # a bin with fewer pairs is shown but not judged
ESTIMATORS = {"hierarchical (p_best)": p_best, "bootstrap (before)": bootstrap_p_best}


@dataclass(frozen=True)
class Scenario:
    label: str
    configurations: int = 4
    items: int = 200
    seeds: tuple = (1,)  # seeds of each configuration, cycled over them
    seed_sd: float = 0.0  # sd of a seed's offset, logits
    spread: float = 0.4  # abilities uniform in [0, spread] logits
    far: bool = False  # the last configuration 2 logits below the others (a diverged rate)
    truth: str = "rerun"  # "rerun": best over reruns; "trained": the trained runs' own means


SCENARIOS = (
    Scenario("1 seed, close, 200 items"),
    Scenario("1 seed, close, 50 items", items=50),
    Scenario("1 seed, close, 1000 items", items=1000),
    Scenario("1 seed, separated, 200 items", spread=1.5),
    Scenario("1 seed, 2 close configurations", configurations=2),
    Scenario("1 seed, 8 close configurations", configurations=8),
    Scenario("1 seed, close and one far worse", configurations=5, far=True),
    Scenario("1 seed, seed noise 0.15, truth: the trained run", seed_sd=0.15, truth="trained"),
    Scenario("1 seed, seed noise 0.15, truth: a rerun", seed_sd=0.15),
    Scenario("3 seeds, seed noise 0.15, close", seeds=(3,), seed_sd=0.15),
    Scenario("3 seeds, seed noise 0.15, separated", seeds=(3,), seed_sd=0.15, spread=1.5),
    Scenario("3 seeds, seed noise 0.4, close", seeds=(3,), seed_sd=0.4),
    Scenario("3 or 1 seeds (adaptive), seed noise 0.15", seeds=(3, 1), seed_sd=0.15),
)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def trial(rng, s: Scenario) -> tuple[dict, str]:
    """One experiment: observed scores (configuration -> seeds x items) and the really best."""
    ability = rng.uniform(0.0, s.spread, s.configurations)
    if s.far:
        ability[-1] = -2.0
    items = rng.normal(0.0, DIFFICULTY_SD, s.items)
    scores, truth = {}, {}
    for c in range(s.configurations):
        seeds = s.seeds[c % len(s.seeds)]
        offset = rng.normal(0.0, s.seed_sd, (seeds, 1))
        right = rng.random((seeds, s.items)) < sigmoid(ability[c] + offset - items)
        scores[f"c{c}"] = right.astype(float)
        truth[f"c{c}"] = ability[c] + (offset.mean() if s.truth == "trained" else 0.0)
    return scores, max(truth, key=truth.get)


def run(scenario: Scenario) -> pd.DataFrame:
    """(scenario, estimator, stated, really_best) of every configuration of every trial."""
    rng = np.random.default_rng(zlib.crc32(scenario.label.encode()))
    pairs = []
    for _ in range(TRIALS):
        scores, best = trial(rng, scenario)
        seed = int(rng.integers(1 << 31))
        for label, estimator in ESTIMATORS.items():
            stated = estimator(scores, resamples=DRAWS, seed=seed)
            pairs += [(scenario.label, label, stated[n], n == best) for n in scores]
    return pd.DataFrame(pairs, columns=["scenario", "estimator", "stated", "really_best"])


def bins(frame: pd.DataFrame) -> pd.DataFrame:
    """Per scenario, estimator and bin of stated P(best): pairs, mean stated, share really
    best with its Wilson 95% interval, gap = observed - stated."""
    frame = frame.assign(bin=pd.cut(frame["stated"], BINS, include_lowest=True))
    rows = (
        frame.groupby(["scenario", "estimator", "bin"], observed=True, sort=False)
        .agg(
            pairs=("stated", "size"),
            stated=("stated", "mean"),
            best=("really_best", "sum"),
        )
        .reset_index()
    )
    rows["observed"] = rows["best"] / rows["pairs"]
    ci = [
        stats.binomtest(int(k), int(n)).proportion_ci(method="wilson")
        for k, n in zip(rows["best"], rows["pairs"], strict=True)
    ]
    rows["low"] = [c.low for c in ci]
    rows["high"] = [c.high for c in ci]
    rows["gap"] = rows["observed"] - rows["stated"]
    rows["bin"] = rows["bin"].astype(str)
    return rows.drop(columns="best")


def summary(frame: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and estimator: Brier score, the largest gap in a bin of MIN_PAIRS or more
    (with its interval), and how often a 'decided' configuration (stated >= 0.9) was best."""
    out = []
    for (scenario, estimator), group in frame.groupby(["scenario", "estimator"], sort=False):
        judged = table[
            (table["scenario"] == scenario)
            & (table["estimator"] == estimator)
            & (table["pairs"] >= MIN_PAIRS)
        ]
        worst = judged.loc[judged["gap"].abs().idxmax()]
        decided = group[group["stated"] >= 0.9]
        out.append(
            {
                "scenario": scenario,
                "estimator": estimator,
                "brier": float(((group["stated"] - group["really_best"]) ** 2).mean()),
                "worst_bin": worst["bin"],
                "worst_gap": worst["gap"],
                "worst_low": worst["low"] - worst["stated"],
                "worst_high": worst["high"] - worst["stated"],
                "decided": len(decided),
                "decided_best": decided["really_best"].mean() if len(decided) else np.nan,
                # yes: every judged bin within 0.1; no: some bin's whole interval beyond it.
                "met": "yes"
                if (judged["gap"].abs() <= 0.1).all()
                else "no"
                if (
                    (judged["low"] - judged["stated"] > 0.1)
                    | (judged["stated"] - judged["high"] > 0.1)
                ).any()
                else "within noise",
            }
        )
    return pd.DataFrame(out)


def main() -> int:
    started = time.perf_counter()
    # Two processes: the scenarios are independent, and this machine has two cores.
    with ProcessPoolExecutor(2) as pool:
        frame = pd.concat(pool.map(run, SCENARIOS), ignore_index=True)
    table = bins(frame)
    sums = summary(frame, table)
    FIGURES.mkdir(parents=True, exist_ok=True)
    table.to_csv(FIGURES / "p_best_calibration.csv", index=False, float_format="%.4f")
    lines = [
        "# P(best) against synthetic ground truth",
        "",
        f"Measured {measure.measured_on()} by `python benchmarks/p_best_calibration.py` "
        f"({time.perf_counter() - started:.0f} s).",
        "",
        f"{TRIALS} trials per scenario. Each configuration is scored right/wrong on the test "
        f"items; abilities uniform in [0, spread] logits (close: 0.4, separated: 1.5), item "
        f"difficulties normal with sd {DIFFICULTY_SD}, each seed's offset normal with the "
        "scenario's sd; default 4 configurations, 200 items. P(best) from "
        f"{DRAWS:,} posterior draws (hierarchical, what the recommendation states) or paired "
        "bootstrap resamples (the estimator it replaced), on the same trials. Really best: "
        "the configuration of highest true mean over reruns, or over its trained run's "
        "own offset where the scenario says 'truth: the trained run'. Gap = observed - stated; "
        "met: |gap| <= 0.1 in every bin of "
        f"{MIN_PAIRS}+ pairs ('yes'), some bin's whole interval beyond 0.1 ('no'), or neither "
        "('within noise'). The interval is Wilson's 95% for the observed share, as a "
        "gap; pairs of one trial are not independent (their P(best) sum to 1), so read it as "
        "a little narrow.",
        "",
        "| scenario | estimator | Brier score | largest gap (bin) | 95% interval of the gap | "
        "stated >= 0.9: pairs, really best | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sums.itertuples():
        decided = f"{r.decided}, {r.decided_best:.3f}" if r.decided else "0"
        lines.append(
            f"| {r.scenario} | {r.estimator} | {r.brier:.3f} | {r.worst_gap:+.3f} "
            f"({r.worst_bin}) | {r.worst_low:+.3f} to {r.worst_high:+.3f} | {decided} | "
            f"{r.met} |"
        )
    lines += [
        "",
        "Every bin:",
        "",
        "| scenario | estimator | stated P(best) bin | pairs | mean stated | really best | "
        "95% interval | gap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.scenario} | {r.estimator} | {r.bin} | {r.pairs} | {r.stated:.3f} | "
            f"{r.observed:.3f} | {r.low:.3f} to {r.high:.3f} | {r.gap:+.3f} |"
        )
    (FIGURES / "p_best_calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 9 + len(sums)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
