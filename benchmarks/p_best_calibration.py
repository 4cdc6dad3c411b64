"""Is the stated P(best) calibrated? On synthetic ground truth, configurations with known true
means: of all the configurations given P(best) near p, is about a share p of them really best?

Each trial draws k configurations and a test set of n items. Item i has a difficulty d_i, each
configuration an ability a_c and each of its trained seeds an offset e_cs (a rerun's noise);
seed s of configuration c answers item i right with probability sigmoid(a_c + e_cs - d_i). A
configuration's true mean is that probability averaged over the whole item population and over
seeds (computed on a large sample), so the really best one is known. tunebench's P(best)
(tunebench.reporting.confidence.p_best: a paired bootstrap over items and seeds) is computed on
the observed right/wrong scores, and every (stated P(best), really best?) pair is binned.

    python benchmarks/p_best_calibration.py                # about a minute on 2 cores

Writes benchmarks/figures/p_best_calibration.{csv,md}. The result depends on the prior the
trials are drawn from (the abilities' spread, the seed noise): it is stated with the figures.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebench import measure  # noqa: E402
from tunebench.reporting.confidence import p_best  # noqa: E402

FIGURES = ROOT / "benchmarks" / "figures"
CONFIGURATIONS = 4
ITEMS = 200  # a typical held-out set (the default experiment scores 360)
TRIALS = 300
ABILITY_SPREAD = 0.4  # abilities uniform in [0, this] (logits): gaps of a few points of accuracy
DIFFICULTY_SD = 1.5  # items from easy to hard
POPULATION = 200_000  # items (and seeds) that define a configuration's true mean
BINS = np.linspace(0.0, 1.0, 11)
# (label, seeds per configuration, sd of a seed's offset in logits)
SCENARIOS = (
    ("1 seed, no seed noise", 1, 0.0),
    ("1 seed, seed noise 0.15", 1, 0.15),
    ("3 seeds, seed noise 0.15", 3, 0.15),
)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def trial(rng, seeds: int, seed_sd: float) -> tuple[dict, str]:
    """One experiment: observed scores (configuration -> seeds x items) and the really best."""
    ability = rng.uniform(0.0, ABILITY_SPREAD, CONFIGURATIONS)
    population = rng.normal(0.0, DIFFICULTY_SD, POPULATION)
    offsets = rng.normal(0.0, seed_sd, POPULATION) if seed_sd else np.zeros(POPULATION)
    # True mean over items and reruns: a fresh seed offset per population draw.
    true = {
        f"c{c}": sigmoid(ability[c] + offsets - population).mean() for c in range(CONFIGURATIONS)
    }
    items = rng.normal(0.0, DIFFICULTY_SD, ITEMS)
    scores = {}
    for c in range(CONFIGURATIONS):
        e = rng.normal(0.0, seed_sd, (seeds, 1)) if seed_sd else np.zeros((seeds, 1))
        scores[f"c{c}"] = (rng.random((seeds, ITEMS)) < sigmoid(ability[c] + e - items)).astype(
            float
        )
    return scores, max(true, key=true.get)


def scenario(label: str, seeds: int, seed_sd: float, rng) -> pd.DataFrame:
    pairs = []
    for _ in range(TRIALS):
        scores, best = trial(rng, seeds, seed_sd)
        stated = p_best(scores, resamples=2_000, seed=int(rng.integers(1 << 31)))
        pairs += [(stated[name], name == best) for name in scores]
    frame = pd.DataFrame(pairs, columns=["stated", "really_best"])
    frame["bin"] = pd.cut(frame["stated"], BINS, include_lowest=True)
    rows = frame.groupby("bin", observed=True).agg(
        pairs=("stated", "size"), stated=("stated", "mean"), observed=("really_best", "mean")
    )
    rows = rows.reset_index()
    rows["gap"] = rows["observed"] - rows["stated"]
    rows.insert(0, "scenario", label)
    rows["bin"] = rows["bin"].astype(str)
    brier = float(((frame["stated"] - frame["really_best"]) ** 2).mean())
    rows.attrs["brier"] = brier
    return rows


def main() -> int:
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    tables = [scenario(label, seeds, sd, rng) for label, seeds, sd in SCENARIOS]
    table = pd.concat(tables, ignore_index=True)
    FIGURES.mkdir(parents=True, exist_ok=True)
    table.to_csv(FIGURES / "p_best_calibration.csv", index=False)
    lines = [
        "# P(best) against synthetic ground truth",
        "",
        f"Measured {measure.measured_on()} by `python benchmarks/p_best_calibration.py` "
        f"({time.perf_counter() - started:.0f} s).",
        "",
        f"{TRIALS} trials per scenario, each {CONFIGURATIONS} configurations scored right/wrong "
        f"on {ITEMS} test items; abilities uniform in [0, {ABILITY_SPREAD}] logits, item "
        f"difficulties normal with sd {DIFFICULTY_SD}; P(best) from 2,000 paired bootstrap "
        "resamples. Per bin of stated P(best): how many (trial, configuration) pairs fell in it, "
        "their mean stated P(best), and the share that really was best (gap = observed - stated; "
        "calibrated within 0.1 means |gap| <= 0.1).",
        "",
        "| scenario | stated P(best) bin | pairs | mean stated | really best | gap |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.scenario} | {row.bin} | {row.pairs} | {row.stated:.3f} | "
            f"{row.observed:.3f} | {row.gap:+.3f} |"
        )
    lines += [
        "",
        "| scenario | Brier score | largest gap in a bin of 30+ pairs |",
        "| --- | --- | --- |",
    ]
    for t in tables:
        big = t[t["pairs"] >= 30]
        worst = big.loc[big["gap"].abs().idxmax()] if len(big) else None
        gap = f"{worst['gap']:+.3f} ({worst['bin']})" if worst is not None else ""
        lines.append(f"| {t['scenario'].iloc[0]} | {t.attrs['brier']:.3f} | {gap} |")
    (FIGURES / "p_best_calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
