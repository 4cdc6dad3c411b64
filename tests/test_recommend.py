"""The recommendation on constructed result sets: ties and intervals over seeds, one seed,
out-of-memory and predicted out-of-memory rows, a budget nothing fits, a metric where lower is
better, and the cheapest configuration within the margin."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from conftest import tiny_experiment

from tunebench.experiment import validate_data
from tunebench.reporting import configurations, recommend


def table_of(runs: list[dict], metrics=("exact_match",)) -> pd.DataFrame:
    """A comparison table as report.comparison_table makes it, from a few fields per run."""
    rows = []
    for i, r in enumerate(runs):
        row = {
            "run_id": f"{r['method']}-{r.get('rank')}-s{r.get('seed', 0)}-{i}",
            "model": "m",
            "dataset": "words",
            "method": r["method"],
            "backend": "hf",
            "rank": r.get("rank"),
            "alpha": None,
            "quant_type": None,
            "learning_rate": 1e-3,
            "seed": r.get("seed", 0),
            "status": r.get("status", "ok"),
            "reason": r.get("reason", ""),
            "peak_memory_gb": r.get("memory", 1.0),
            "memory_kind": r.get("memory_kind", "cpu_peak_rss"),
            "predicted_peak_gb": r.get("predicted", 10.0),
            "accelerator_hours": r.get("hours", 0.1),
            "cost_usd": r.get("cost", 1.0),
            "train_seconds": 360.0,
            "trainable_params": 10,
            "test_loss": r.get("loss"),
        }
        for m in metrics:
            row[m] = r.get(m)
            row[f"delta_{m}_vs_base"] = None if r.get(m) is None else r[m] - 0.1
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["metrics"] = list(metrics)
    return table


def answers_for(runs, report=None, metrics=("exact_match",)):
    exp = validate_data(tiny_experiment(report=report or {}))
    configs = configurations.configurations(table_of(runs, metrics), exp.report.confidence)
    return configs, recommend.recommend(configs, exp), exp


def test_three_seeds_give_intervals_ties_and_the_best():
    runs = (
        [{"method": "full", "seed": s, "exact_match": v} for s, v in enumerate([0.60, 0.62, 0.64])]
        + [
            {"method": "lora", "rank": 8, "seed": s, "exact_match": v}
            for s, v in enumerate([0.58, 0.61, 0.63])
        ]
        + [
            {"method": "lora", "rank": 2, "seed": s, "exact_match": v}
            for s, v in enumerate([0.30, 0.31, 0.32])
        ]
    )
    configs, (answer,), _ = answers_for(runs)
    full = configs[configs["method"] == "full"].iloc[0]
    assert full["exact_match"] == pytest.approx(0.62)
    assert full["exact_match_sd"] == pytest.approx(0.02)
    # t(0.975, 2) = 4.303: half-width 4.303 * 0.02 / sqrt(3)
    assert full["exact_match_high"] - 0.62 == pytest.approx(4.303 * 0.02 / 3**0.5, rel=1e-3)
    assert answer.best.configuration == "m full" and not answer.one_seed
    assert answer.runner_up.configuration == "m lora r8"
    assert [c.configuration for c in answer.tied] == ["m lora r8"]  # r2 is far below
    assert answer.best.gain_vs_base == pytest.approx(0.52)


def test_one_seed_says_no_interval_instead_of_judging_ties():
    runs = [
        {"method": "full", "exact_match": 0.5},
        {"method": "lora", "rank": 8, "exact_match": 0.5},
    ]
    configs, (answer,), exp = answers_for(runs)
    assert answer.one_seed and answer.tied == []
    assert math.isnan(answer.best.low)
    text = recommend.markdown([answer], exp)
    assert "one seed: no interval" in text and "1 seed: no interval" in text


def test_out_of_memory_rows_are_named_and_a_budget_nothing_fits_says_so():
    runs = [
        {"method": "full", "status": "oom", "reason": "CUDA out of memory"},
        {"method": "lora", "rank": 8, "exact_match": 0.4, "predicted": 30.0},
        {"method": "lora", "rank": 2, "status": "predicted_oom", "reason": "predicted 90 GiB"},
    ]
    budgets = [{"name": "24 GB", "gpu_memory_gb": 24}, {"name": "any"}]
    _, (small, anything), exp = answers_for(runs, {"budgets": budgets})
    assert small.best is None
    why = dict(small.excluded)
    assert why["m full"].startswith("measured out of memory")
    assert why["m lora r2"].startswith("predicted not to fit")
    assert why["m lora r8"] == "predicted peak 30.00 GB > 24 GB"
    assert anything.best.configuration == "m lora r8"
    text = recommend.markdown([small, anything], exp)
    assert "**Nothing fits this budget.**" in text and "Does not fit: m full" in text


def test_measured_gpu_memory_wins_over_the_prediction():
    runs = [
        {
            "method": "lora",
            "rank": 8,
            "exact_match": 0.4,
            "memory": 20.0,
            "memory_kind": "cuda_max_reserved",
            "predicted": 30.0,
        }
    ]
    configs, (answer,), _ = answers_for(runs, {"budgets": [{"name": "24 GB", "gpu_memory_gb": 24}]})
    assert configs.iloc[0]["gpu_memory_source"] == "measured"
    assert answer.best is not None and answer.best.gpu_memory_gb == 20.0


def test_lower_is_better_and_the_cheapest_within_margin():
    runs = [
        {"method": "full", "loss": 1.00, "cost": 9.0, "exact_match": 0.1},
        {"method": "lora", "rank": 8, "loss": 1.01, "cost": 1.0, "exact_match": 0.1},
        {"method": "lora", "rank": 2, "loss": 1.50, "cost": 0.1, "exact_match": 0.1},
    ]
    report = {
        "metric": "test_loss",
        "margin": 0.05,
        "budgets": [{"name": "cheap", "cost": 5}, {"name": "any"}],
    }
    _, (cheap, anything), _ = answers_for(runs, report)
    assert not anything.higher_is_better
    assert anything.best.configuration == "m full"
    assert anything.cheapest_within_margin.configuration == "m lora r8"
    assert cheap.best.configuration == "m lora r8"
    assert dict(cheap.excluded)["m full"] == "cost 9 USD > 5"


def test_the_metric_must_be_scored():
    from tunebench.experiment import ExperimentError

    with pytest.raises(ExperimentError, match="report.metric 'bleu' is not scored"):
        validate_data(tiny_experiment(report={"metric": "bleu"}))


def test_nothing_scored_yet_excludes_everything_without_failing():
    runs = [{"method": "full", "status": "failed", "reason": "bad data"}]
    configs, (answer,), exp = answers_for(runs, metrics=())
    assert answer.best is None and dict(answer.excluded)["m full"] == "failed: bad data"
    assert "Nothing fits" in recommend.markdown([answer], exp)
