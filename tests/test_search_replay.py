"""The replay benchmark's pure parts (benchmarks/search_replay.py): the tie set, the compute
shares and a replay through halving.promote, on hand-made logs."""

from __future__ import annotations

import math
import sys

import pandas as pd
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import search_replay  # noqa: E402


def test_tie_set_is_within_seed_noise_of_the_best():
    # Each configuration's two seeds differ by 0.02: a variance of 0.0002 each, and the median
    # of a chi-squared with one degree of freedom is 0.455 (|z| < 0.674 half the time).
    runs = pd.DataFrame(
        {
            "configuration": ["a", "a", "b", "b", "c", "c"],
            "loss": [1.00, 1.02, 1.02, 1.04, 1.05, 1.07],
        }
    )
    sd = search_replay.seed_sd(runs, "loss")
    assert sd == pytest.approx(0.02 / math.sqrt(2) / 0.6745, rel=1e-3)
    # A diverged configuration's seeds far apart do not widen the noise.
    diverged = pd.DataFrame({"configuration": ["d", "d"], "loss": [3.0, 3.5]})
    assert search_replay.seed_sd(pd.concat([runs, diverged]), "loss") == pytest.approx(sd)
    means = runs.groupby("configuration").loss.mean().to_dict()
    # The margin is 2 x sd x sqrt(2 / 2) = 0.042: b (0.02 worse) ties, c (0.05 worse) does not.
    assert search_replay.tie_set(means, sd, seeds=2, lower_is_better=True) == {"a", "b"}
    # More seeds, a smaller margin (0.030): b still ties; a quarter of the noise: b does not.
    assert search_replay.tie_set(means, sd, seeds=4, lower_is_better=True) == {"a", "b"}
    assert search_replay.tie_set(means, sd / 4, seeds=2, lower_is_better=True) == {"a"}
    # Higher is better (a test score): c is then the best, alone.
    assert search_replay.tie_set(means, sd / 4, seeds=2, lower_is_better=False) == {"c"}


def test_compute_shares():
    steps = [16, 50, 150]
    # 9 configurations to step 16, 3 on to 50, 1 to 150, 2 seeds each; the grid: 9 x 150 x 2.
    spent = search_replay.steps_spent([9, 3, 1], steps, seeds=2)
    assert spent == 9 * 16 * 2 + 3 * 34 * 2 + 1 * 100 * 2
    assert search_replay.steps_spent([9], [150], seeds=2) == 2700
    # A job's start (the intercept) is paid once per rung segment by the search.
    fit = (5.0, 0.1)
    assert search_replay.job_seconds([9, 3, 1], steps, 2, fit) == pytest.approx(
        18 * (5 + 1.6) + 6 * (5 + 3.4) + 2 * (5 + 10)
    )
    assert search_replay.job_seconds([9], [150], 2, fit) == pytest.approx(18 * 20)


def test_replay_promotes_within_each_method_by_the_rung_score():
    steps = [10, 100]
    brackets = {"f1": "full", "f2": "full", "f3": "full", "l1": "lora", "l2": "lora"}
    scores = {
        "f1": {10: 2.0, 100: 1.0},  # the best at the end, but last at the rung: pruned
        "f2": {10: 1.5, 100: 1.4},
        "f3": {10: 1.8, 100: 1.3},
        "l1": {10: 0.5, 100: 0.9},  # lora's scores never prune a full run
        "l2": {10: 0.6, 100: 0.4},
    }
    counts = {"full": [3, 2], "lora": [2, 1]}
    winners, reached = search_replay.replay(scores, brackets, steps, counts, list(scores))
    assert winners == {"full": "f3", "lora": "l1"}
    assert reached == {"full": [3, 2], "lora": [2, 1]}
    again, _ = search_replay.replay(scores, brackets, steps, counts, list(reversed(scores)))
    assert again == winners


def test_the_published_sweep_replay_reads_curves_noise_and_rungs():
    """benchmarks/search_replay_published.py's pure parts, on a hand-made table in
    peft_curves.py's format: two snapshots of two configurations and one found once."""
    import search_replay_published as published

    assert published.curve_of("250:0.3 500:0.42") == {250: 0.3, 500: 0.42}
    table = pd.DataFrame(
        {
            "commit": ["new", "new", "new", "old", "old"],
            "experiment": ["a", "b", "c", "a", "b"],
            "test_accuracy": [0.50, 0.40, 0.30, 0.52, 0.40],
            "valid_accuracy_by_step": ["250:0.1 500:0.5", "250:0.2 500:0.4", "250:0.3 500:0.1"]
            + ["250:0.1 500:0.6", "250:0.2 500:0.4"],
        }
    )
    assert published.curves(table[table.commit == "new"])["c"] == {250: 0.3, 500: 0.1}
    noise = published.rerun_noise(table)
    # Only a and b were rerun; the median of their variances (0.0002 and 0, on test) over the
    # median of a chi-squared with one degree of freedom, as search_replay.seed_sd.
    assert noise["configurations"] == 2
    assert noise["test"] == pytest.approx(math.sqrt(0.0001 / 0.4549), rel=1e-3)
    assert noise["validation"] == pytest.approx(math.sqrt(0.0025 / 0.4549), rel=1e-3)
    # Rungs are kept only where every one is a validated step: 5,000 / eta^k.
    steps = list(range(250, 5001, 250))
    rungs = {tuple(r) for _, _, r in published.schedules(steps, 5000)}
    assert (1250, 2500, 5000) in rungs and (250, 5000) in rungs
    assert all(set(r) <= set(steps) for r in rungs)
    assert not any(1666 in r for r in rungs)  # eta 3's rungs were never validated
    # The smallest budget takes all to the first rung and one on; ample, the best 1/eta.
    assert published.counts(9, [1250, 5000], 4, 1.0) == [9, 1]
    assert published.counts(9, [1250, 5000], 4, None) == [9, 3]
