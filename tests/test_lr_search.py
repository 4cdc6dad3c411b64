"""The per-method learning-rate search (issue 26, section 1): a methods entry's learning_rate
as a range {low, high, points}. The schema (good and hostile ranges, a dataset without a
validation split), the expansion (log-spaced points, ids the same as the configuration trained
alone), the choice on validation and never on test (a results folder where the two disagree),
the report (the chosen and tried learning rates, the recommendation at each method's own
chosen learning rate, P(best) over the chosen ones only), and one cheap run end to end."""

from __future__ import annotations

import math

import pytest
from conftest import tiny_experiment

from tunebench import layout, search, stages
from tunebench.experiment import ExperimentError, validate_data, validate_matrix
from tunebench.io import read_json, write_json, write_jsonl
from tunebench.matrix import SCORING_ONLY, baselines, dataset_key, expand, model_key
from tunebench.reporting import configurations, recommend
from tunebench.reporting.report import comparison_table, compile_comparison
from tunebench.spec import LearningRateRange, Tracking

RANGE = {"low": 1e-5, "high": 1e-3, "points": 5}
POINTS = [1e-5, 3.16e-5, 1e-4, 3.16e-4, 1e-3]


def searching(lora_rates=RANGE, full_rates=None, **overrides) -> dict:
    """tiny_experiment with the LoRA entry's learning_rate a range (and full's, if given)."""
    exp = tiny_experiment(**overrides)
    exp["methods"][1]["learning_rate"] = lora_rates
    if full_rates is not None:
        exp["methods"][0]["learning_rate"] = full_rates
    return exp


def error_of(data) -> str:
    with pytest.raises(ExperimentError) as info:
        validate_data(data)
    return str(info.value)


# ---------------------------------------------------------------- the schema


def test_a_range_expands_into_log_spaced_ordinary_runs():
    runs = expand(validate_data(searching()))
    lora = sorted((r for r in runs if r.method == "lora"), key=lambda r: r.learning_rate)
    assert [r.learning_rate for r in lora] == POINTS
    assert all(r.lr_search for r in lora)
    assert not any(r.lr_search for r in runs if r.method == "full")
    # Log-spaced: each point about sqrt(10) times the one before (3 significant digits).
    ratios = [b.learning_rate / a.learning_rate for a, b in zip(lora, lora[1:], strict=False)]
    assert all(math.isclose(q, 10**0.5, rel_tol=2e-3) for q in ratios)
    # The ends exactly as written; a range over any span, any count.
    values = LearningRateRange(low=2e-4, high=2e-2, points=3).values()
    assert values == [2e-4, 2e-3, 2e-2]
    assert len(LearningRateRange(low=1e-6, high=1e-1, points=50).values()) == 50


def test_a_point_of_a_search_is_the_same_run_as_that_configuration_trained_alone():
    searched = {r.learning_rate: r for r in expand(validate_data(searching())) if r.lr_search}
    for lr in POINTS:
        (alone,) = [r for r in expand(validate_data(searching(lr))) if r.method == "lora"]
        assert not alone.lr_search
        assert searched[lr].run_id == alone.run_id
    # Stable across versions: the id hashes the resolved configuration, not the search.
    assert searched[1e-5].run_id == "m-lora-r4-words-s0-4a55fb67"
    assert searched[3.16e-5].run_id == "m-lora-r4-words-s0-fcf2a21d"
    # The jobs get the run without the marker: joining a search retrains nothing.
    assert "lr_search" not in searched[1e-5].model_dump(exclude=SCORING_ONLY)
    (alone,) = [r for r in expand(validate_data(searching(1e-5))) if r.method == "lora"]
    job = searched[1e-5].model_dump_json(exclude=SCORING_ONLY)
    assert job == alone.model_dump_json(exclude=SCORING_ONLY)


def test_a_search_and_a_list_share_their_common_run_once_as_the_searchs_point():
    exp = searching()
    exp["methods"].append({"method": "lora", "ranks": [4], "learning_rate": [1e-4, 5e-3]})
    runs = expand(validate_data(exp))
    by_lr = {r.learning_rate: r for r in runs if r.method == "lora"}
    assert len(by_lr) == 6 and by_lr[1e-4].lr_search and not by_lr[5e-3].lr_search


def test_include_of_an_entry_with_a_range_searches_unless_it_names_a_learning_rate():
    exp = searching(include=[{"model": "m", "method": "lora", "rank": 16}])
    r16 = [r for r in expand(validate_data(exp)) if r.rank == 16]
    assert sorted(r.learning_rate for r in r16) == POINTS and all(r.lr_search for r in r16)
    exp = searching(include=[{"model": "m", "method": "lora", "rank": 16, "learning_rate": 2e-4}])
    (r16,) = [r for r in expand(validate_data(exp)) if r.rank == 16]
    assert r16.learning_rate == 2e-4 and not r16.lr_search
    # Excluding one point leaves a smaller search; lr_search is no selector.
    exp = searching(exclude=[{"method": "lora", "learning_rate": 1e-3}])
    assert len([r for r in expand(validate_data(exp)) if r.lr_search]) == 4
    exp = searching(exclude=[{"lr_search": True}])
    assert "exclude[0].lr_search: unknown field" in error_of(exp)


@pytest.mark.parametrize(
    "rates, message",
    [
        (
            {"low": 1e-3, "high": 1e-5, "points": 5},
            "methods[1].learning_rate: Value error, low (0.001) must be below high (1e-05)",
        ),
        (
            {"low": 1e-4, "high": 1e-4, "points": 3},
            "methods[1].learning_rate: Value error, low (0.0001) must be below high",
        ),
        ({"low": 0, "high": 1e-3, "points": 5}, "methods[1].learning_rate.low: Input should be"),
        ({"low": -1e-5, "high": 1e-3, "points": 5}, "methods[1].learning_rate.low: Input should"),
        (
            {"low": 1e-5, "high": float("inf"), "points": 5},
            "methods[1].learning_rate.high: Input should be less than or equal to 1000000",
        ),
        (
            {"low": float("nan"), "high": 1e-3, "points": 5},
            "methods[1].learning_rate.low: Input should be",
        ),
        (
            {"low": 1e-5, "high": 1e-3, "points": 1},
            "methods[1].learning_rate.points: Input should be greater than or equal to 2",
        ),
        (
            {"low": 1e-5, "high": 1e-3, "points": 10**9},
            "methods[1].learning_rate.points: Input should be less than or equal to 50",
        ),
        (
            {"low": 1e-5, "high": 1e-3, "points": 2.5},
            "methods[1].learning_rate.points: Input should be a valid integer",
        ),
        ({"low": 1e-5, "high": 1e-3}, "methods[1].learning_rate.points: Field required"),
        (
            {"low": 1e-5, "high": 1e-3, "points": 5, "scale": "linear"},
            "methods[1].learning_rate.scale: Extra inputs are not permitted",
        ),
        (
            {"low": 1e-5, "high": 1.001e-5, "points": 20},
            "20 points from 1e-05 to 1.001e-05 repeat a learning rate at 3 significant digits",
        ),
        ({}, "methods[1].learning_rate.low: Field required"),
        ("fast", "methods[1].learning_rate[0]: Input should be a valid number"),
    ],
)
def test_a_hostile_range_is_an_error_naming_its_key(rates, message):
    assert message in error_of(searching(rates))


def test_a_search_needs_a_validation_split():
    for split in ({"validation_size": 0}, {"validation_fraction": 0.0}):
        exp = searching()
        exp["datasets"][0].update(split)
        text = error_of(exp)
        assert "methods[1].learning_rate is a range, chosen on the validation split" in text
        assert "datasets[0] ('words') holds out no validation examples" in text
        assert "set validation_fraction or validation_size above 0" in text
    exp = searching(datasets=[{"name": "f", "files": {"train": "a.jsonl", "test": "b.jsonl"}}])
    text = error_of(exp)
    assert "datasets[0] ('f') has no validation file: give files.validation" in text
    assert "validation_fraction or validation_size" in text
    split = {"train": {"path": "a.jsonl"}, "test": {"path": "b.jsonl"}}
    text = error_of(searching(datasets=[{"name": "s", "splits": split}]))
    assert "has no validation source: give splits.validation" in text
    # Without a range the same datasets are fine (no learning rate is chosen).
    exp = tiny_experiment()
    exp["datasets"][0]["validation_size"] = 0
    validate_data(exp)


def test_a_range_is_for_sft_entries_and_cannot_be_continued_by_dpo():
    dpo = {"method": "lora", "ranks": [4], "objective": "dpo", "learning_rate": RANGE}
    data = {"name": "words", "builtin": "wordops", "n_words": 120, "format": "preference"}
    text = error_of(tiny_experiment(methods=[dpo], datasets=[data]))
    assert "methods[0]: Value error, learning_rate: a range is chosen by validation loss" in text
    assert "for objective sft only, not dpo" in text
    sft = {"method": "lora", "label": "sft", "ranks": [4], "learning_rate": RANGE}
    after = {"method": "lora", "ranks": [4], "objective": "dpo", "start_from": "sft"}
    text = error_of(tiny_experiment(methods=[sft, after], datasets=[data]))
    assert "methods[1].start_from 'sft': that entry's learning_rate is a range" in text


# ---------------------------------------------------------------- the choice on validation


def write_results(
    root, exp, validation: dict | None = None, test: dict | None = None, status=None, n=40
):
    """Result files for every run of `exp`: the run of method M at learning rate LR has
    validation loss validation[M][LR] (+0.01 x seed) and is right on test[M][LR] of n test
    items; status[(M, LR)] fails it. By default both methods' scores above."""
    validation = validation or {"lora": LORA_VALIDATION, "full": FULL_VALIDATION}
    test = test or {"lora": LORA_TEST, "full": FULL_TEST}
    status = status or {}
    for model, dataset in baselines(exp):
        path = layout.BASELINE_RESULT.format(model=model_key(model), dataset=dataset_key(dataset))
        write_json(root / path, {"status": "ok", "exact_match": 0.0, "examples": n})
    for run in expand(exp):
        key = (run.method, run.learning_rate)
        failed = status.get(key)
        write_json(
            root / layout.TRAIN_RESULT.format(run_id=run.run_id),
            {
                "run_id": run.run_id,
                "status": failed or "ok",
                "reason": "diverged" if failed else "",
                "validation_loss": validation[run.method][run.learning_rate] + 0.01 * run.seed,
                "accelerator_hours": 0.01,
                "prediction": {"predicted_peak_gb": 1.0},
                "provenance": {"hardware": {"accelerator": "cpu"}},
            },
        )
        if failed:
            continue
        right = test[run.method][run.learning_rate]
        rows = [
            {"id": i, "exact_match": float(i < right), "exact_match_normalised": float(i < right)}
            for i in range(n)
        ]
        write_json(
            root / layout.EVAL_RESULT.format(run_id=run.run_id),
            {"run_id": run.run_id, "status": "ok", "exact_match": right / n, "examples": n},
        )
        write_jsonl(root / layout.EVAL_SAMPLES.format(run_id=run.run_id), rows)


def report(root, exp):
    configs = configurations.configurations(comparison_table(exp, root), exp.report.confidence)
    answers = recommend.recommend(configs, exp, root)
    return configs, answers, recommend.markdown(answers, exp)


# LoRA: validation prefers 1e-4; test would prefer 1e-3 (35 of 40 right there, 20 at 1e-4).
LORA_VALIDATION = dict(zip(POINTS, [2.5, 2.2, 1.9, 2.0, 2.3], strict=True))
LORA_TEST = dict(zip(POINTS, [5, 10, 20, 30, 35], strict=True))
# Full fine-tuning: validation prefers 1e-5; test would prefer 1e-3.
FULL_POINTS = [1e-5, 1e-4, 1e-3]
FULL_VALIDATION = dict(zip(FULL_POINTS, [1.5, 1.8, 2.4], strict=True))
FULL_TEST = dict(zip(FULL_POINTS, [12, 25, 38], strict=True))


def two_searches(seeds=(0,)):
    exp = searching(full_rates={"low": 1e-5, "high": 1e-3, "points": 3})
    exp["training"]["seeds"] = list(seeds)
    return validate_data(exp)


def test_the_learning_rate_is_chosen_on_validation_not_on_test(tmp_path):
    exp = two_searches(seeds=(0, 1))
    write_results(tmp_path, exp)
    configs, (answer,), text = report(tmp_path, exp)
    lora = configs[configs["method"] == "lora"]
    full = configs[configs["method"] == "full"]
    assert set(lora["lr_chosen"]) == {1e-4} and set(full["lr_chosen"]) == {1e-5}
    assert lora.loc[lora["candidate"], "learning_rate"].tolist() == [1e-4]
    assert full.loc[full["candidate"], "learning_rate"].tolist() == [1e-5]
    assert set(configs.loc[configs["method"] != "base", "lr_chosen_by"]) == {"validation_loss"}
    tried = lora["lr_tried"].iloc[0]
    assert (
        tried == "1e-05 (2.505), 3.16e-05 (2.205), 0.0001 (1.905)*, 0.000316 (2.005), 0.001 (2.305)"
    )
    # The recommendation: LoRA at 1e-4 (20/40) beats full at 1e-5 (12/40); the test-best
    # learning rates (1e-3: 35 and 38 of 40) are not candidates, nor in P(best).
    assert answer.best.configuration == "m lora r4 lr 0.0001"
    assert answer.runner_up.configuration == "m full lr 1e-05"
    assert [name for name, _ in answer.p_best] == ["m lora r4 lr 0.0001", "m full lr 1e-05"]
    assert answer.best.p_best > 0.9
    assert not any("0.001" in name for name, _ in answer.excluded)
    assert "each method at its own validation-chosen learning rate" in text


def test_a_learning_rate_that_failed_or_has_no_validation_loss_is_not_chosen(tmp_path):
    exp = two_searches()
    # LoRA's best validation loss (1e-4) failed; full's best (1e-5) has no validation loss.
    write_results(
        tmp_path,
        exp,
        status={("lora", 1e-4): "failed"},
    )
    (run,) = [r for r in expand(exp) if r.method == "full" and r.learning_rate == 1e-5]
    path = tmp_path / layout.TRAIN_RESULT.format(run_id=run.run_id)
    write_json(path, read_json(path) | {"validation_loss": None})
    configs, _, _ = report(tmp_path, exp)
    lora = configs[configs["method"] == "lora"]
    full = configs[configs["method"] == "full"]
    assert set(lora["lr_chosen"]) == {3.16e-4} and set(full["lr_chosen"]) == {1e-4}
    assert "0.0001 (failed)" in lora["lr_tried"].iloc[0]
    assert "0.000316 (2)*" in lora["lr_tried"].iloc[0]
    assert "1e-05 (no validation_loss)" in full["lr_tried"].iloc[0]


def test_a_search_with_no_learning_rate_to_choose_is_said_and_not_recommended(tmp_path):
    exp = two_searches()
    write_results(
        tmp_path,
        exp,
        status={("full", lr): "oom" for lr in FULL_POINTS},
    )
    configs, (answer,), text = report(tmp_path, exp)
    full = configs[configs["method"] == "full"]
    assert full["lr_chosen"].isna().all() and not full["candidate"].any()
    assert [name for name, _ in answer.p_best] == ["m lora r4 lr 0.0001"]
    assert "- Does not fit: m full: no learning rate chosen on validation: 1e-05 (oom)" in text


def test_ties_go_to_the_smaller_learning_rate():
    points = [search.Point(1e-3, 2.0), search.Point(1e-4, 2.0), search.Point(1e-5, 2.5)]
    assert search.best(points).learning_rate == 1e-4
    assert search.best([search.Point(1e-4, math.nan, "failed")]) is None


def test_comparison_md_shows_the_chosen_and_tried_learning_rates(tmp_path):
    exp = two_searches()
    write_results(tmp_path, exp)
    compile_comparison(exp, tmp_path, tmp_path / "out")
    text = (tmp_path / "out" / "comparison.md").read_text()
    table = text.split("### Learning rates")[0]
    assert "| m lora r4 lr 0.0001 " in table and "| m full lr 1e-05 " in table
    assert "lr 0.001 " not in table  # the test-best learning rates are not rows of the table
    assert "### Learning rates chosen on validation" in text
    assert "- m lora r4: learning rate 0.0001 (lowest mean validation_loss of 1e-05" in text
    assert "each method at its own validation-chosen learning rate" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 160
    html = (tmp_path / "out" / "report.html").read_text()
    assert "each method at its own validation-chosen learning rate" in html
    assert "m lora r4: learning rate 0.0001 (lowest mean validation_loss of 1e-05" in html
    by_config = (tmp_path / "out" / "comparison_by_config.csv").read_text()
    assert "lr_chosen" in by_config.splitlines()[0] and "lr_tried" in by_config


# ---------------------------------------------------------------- end to end, cheaply


def test_trained_runs_are_chosen_by_their_own_validation_loss(tiny_model, tiny_data, tmp_path):
    """Three real training runs of the tiny model (20 steps each, a few seconds): the table
    reports full fine-tuning at the learning rate whose recorded validation loss is lowest."""
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    full = {"method": "full", "learning_rate": {"low": 1e-4, "high": 1e-2, "points": 3}}
    exp = validate_data(tiny_experiment(methods=[full]))
    runs = expand(exp)
    assert sorted(r.learning_rate for r in runs) == [1e-4, 1e-3, 1e-2]
    losses = {}
    for run in runs:
        run_dir = tmp_path / layout.RUN.format(run_id=run.run_id)
        result = stages.train(
            run=run,
            tokenized=tokenized,
            run_dir=run_dir,
            result=tmp_path / layout.TRAIN_RESULT.format(run_id=run.run_id),
            tracking=Tracking(),
            model_dir=model_dir,
            threads=2,
        )
        assert result["status"] == "ok", result["reason"]
        losses[run.learning_rate] = result["validation_loss"]
        # A test score that would pick the largest learning rate, were test to choose.
        write_json(
            tmp_path / layout.EVAL_RESULT.format(run_id=run.run_id),
            {"run_id": run.run_id, "status": "ok", "exact_match": run.learning_rate, "examples": 4},
        )
    configs = configurations.configurations(comparison_table(exp, tmp_path))
    chosen = min(losses, key=losses.get)
    assert len(set(losses.values())) == 3, losses
    assert set(configs.loc[configs["method"] == "full", "lr_chosen"]) == {chosen}
    (row,) = configs[configs["candidate"] & (configs["method"] == "full")].itertuples()
    assert row.learning_rate == chosen and row.validation_loss == pytest.approx(losses[chosen])


def test_validate_matrix_reports_a_range_like_any_other_setting():
    exp, runs = validate_matrix(searching())
    assert exp.methods[1].lr_range == LearningRateRange(**RANGE)
    assert exp.methods[0].lr_range is None and len(runs) == 6


def test_without_a_search_the_outputs_keep_their_columns(tmp_path):
    exp = validate_data(tiny_experiment())
    lora = {lr: 2.0 for lr in [5e-3]}
    write_results(
        tmp_path, exp, {"lora": lora, "full": {2e-3: 1.0}}, {"lora": {5e-3: 4}, "full": {2e-3: 8}}
    )
    configs, (answer,), text = report(tmp_path, exp)
    assert configs["candidate"].all() and not configs["lr_search"].any()
    shown = search.for_output(configs)
    assert not [c for c in shown if c.startswith("lr_") or c in ("candidate", "validation_scored")]
    assert "validation-chosen" not in text and answer.best.configuration == "m full"


@pytest.mark.slow
def test_bare_snakemake_plans_every_point_of_a_search(tmp_path):
    """The workflow takes a range through its JSON schema and plans one train job per point."""
    import yaml
    from test_workflow import planned_jobs, snakemake_dry_run

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(searching()))
    jobs = planned_jobs(snakemake_dry_run(tmp_path, path))
    assert jobs["train"] == 6 and jobs["evaluate"] == 6, jobs


def test_a_reference_cell_on_a_searched_configuration_compares_its_chosen_rate(tmp_path):
    from tunebench.reporting import reproduction

    data = searching(full_rates={"low": 1e-5, "high": 1e-3, "points": 3})
    data["reference"] = {
        "study": "a made-up study",
        "hardware": "NVIDIA L40S",
        "cells": [
            {
                "run": {"method": "lora", "rank": 4},
                "measure": "exact_match",
                "value": 0.5,
                "source": "made up",
            },
            {
                "run": {"method": "full", "learning_rate": 1e-3},
                "measure": "exact_match",
                "value": 0.9,
                "source": "made up",
            },
        ],
    }
    exp = validate_data(data)
    write_results(tmp_path, exp)
    table = comparison_table(exp, tmp_path)
    rows = reproduction.compare(table, configurations.configurations(table), exp)
    assert rows["configuration"].tolist() == ["m lora r4 lr 0.0001", "m full lr 0.001"]
    assert rows["reproduced"].tolist() == [0.5, 38 / 40]
