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
