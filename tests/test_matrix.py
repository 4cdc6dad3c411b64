"""Matrix expansion, include/exclude, and run-id stability."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, tiny_experiment

from tunebench.experiment import ExperimentError, load_experiment, validate_data
from tunebench.matrix import baselines, dataset_key, expand, tokenizer_key


def runs_of(data):
    return expand(validate_data(data))


def test_smoke_matrix_covers_every_method_and_both_sizes():
    """Every method on tiny-m; full fine-tuning on tiny-s, for the size comparison."""
    exp = load_experiment(REPO / "experiments" / "smoke.yaml")
    cells = {(r.model.name, r.method, r.rank) for r in expand(exp)}
    assert cells == {
        ("tiny-m", "full", None),
        ("tiny-m", "lora", 2),
        ("tiny-m", "lora", 8),
        ("tiny-m", "qlora", 8),
        ("tiny-m", "dora", 8),
        ("tiny-s", "full", None),
    }
    assert len(baselines(exp)) == 2
    # DPO continues the LoRA r8 run of tiny-m (preference tuning, on the same pairs).
    runs = expand(exp)
    (dpo,) = [r for r in runs if r.objective == "dpo"]
    (sft,) = [r for r in runs if r.run_id == dpo.start_from]
    assert (dpo.model.name, sft.method, sft.rank, sft.objective) == ("tiny-m", "lora", 8, "sft")
    # Both built-in sizes share one tokenizer, hence one tokenised dataset.
    assert len({tokenizer_key(m) for m in exp.models}) == 1


def test_axes_multiply():
    exp = tiny_experiment()
    exp["methods"][1] = {"method": "lora", "ranks": [2, 4, 8], "alpha": [8, 16]}
    exp["training"]["seeds"] = [0, 1]
    runs = runs_of(exp)
    assert len(runs) == 2 * (1 + 3 * 2)
    assert {(r.rank, r.alpha) for r in runs if r.method == "lora"} == {
        (r, a) for r in (2, 4, 8) for a in (8.0, 16.0)
    }


def test_alpha_ratio_and_method_learning_rate():
    exp = tiny_experiment()
    exp["methods"][1] = {"method": "lora", "ranks": [4], "alpha_ratio": 4}
    exp["training"]["learning_rate"] = 1e-4
    lora = next(r for r in runs_of(exp) if r.method == "lora")
    assert lora.alpha == 16
    assert lora.learning_rate == 1e-4  # falls back to training.learning_rate
    full = next(r for r in runs_of(exp) if r.method == "full")
    assert full.learning_rate == 2e-3


def test_run_ids_are_stable_across_machines():
    """Literal ids: if this changes, every existing result folder is orphaned. Bump ID_VERSION
    on purpose when a field's meaning changes; never by accident."""
    ids = sorted(r.run_id for r in runs_of(tiny_experiment()))
    assert ids == ["m-full-words-s0-9a923a2a", "m-lora-r4-words-s0-20273d6f"]


def test_changing_a_hyperparameter_changes_only_that_runs_id():
    before = {r.method: r.run_id for r in runs_of(tiny_experiment())}
    exp = tiny_experiment()
    exp["methods"][1]["learning_rate"] = 1e-2
    after = {r.method: r.run_id for r in runs_of(exp)}
    assert after["full"] == before["full"]
    assert after["lora"] != before["lora"]


def test_evaluation_and_cost_settings_do_not_change_run_ids():
    before = [r.run_id for r in runs_of(tiny_experiment())]
    after = [
        r.run_id
        for r in runs_of(
            tiny_experiment(evaluation={"max_new_tokens": 4}, cost={"price_per_hour": {"cpu": 9}})
        )
    ]
    assert before == after


def test_dataset_key_follows_its_settings():
    exp = validate_data(tiny_experiment())
    changed = exp.datasets[0].model_copy(update={"split_seed": 1})
    assert dataset_key(exp.datasets[0]) != dataset_key(changed)


def test_exclude_and_include():
    exp = tiny_experiment(
        exclude=[{"method": "full"}], include=[{"model": "m", "method": "lora", "rank": 16}]
    )
    runs = runs_of(exp)
    assert sorted(r.rank for r in runs) == [4, 16]
    added = next(r for r in runs if r.rank == 16)
    assert added.alpha == 32  # keeps the entry's alpha/rank ratio


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"exclude": [{"method": "dora"}]}, "exclude[0]: matches no run"),
        ({"exclude": [{"methd": "full"}]}, "exclude[0].methd: unknown field"),
        ({"exclude": [{"model": "m"}]}, "the matrix is empty"),
        ({"include": [{"model": "nope", "method": "lora"}]}, "include[0].model: no model named"),
        ({"include": [{"model": "m", "method": "dora"}]}, "include[0].method: no methods entry"),
        (
            {"include": [{"model": "m", "method": "full", "rank": 4}]},
            "full fine-tuning has no rank",
        ),
        ({"export": {"runs": [{"method": "dora"}]}}, "export.runs[0]: matches no run"),
        ({"export": {"runs": [{"rnk": 4}]}}, "export.runs[0].rnk: unknown field"),
        (
            {"export": {"best_by": "rouge_l"}},
            "export.best_by: 'rouge_l' is not scored on dataset 'words'",
        ),
        ({"export": {"types": ["q4_k_m"]}}, "export.types[0]: Input should be"),
    ],
)
def test_bad_include_exclude(change, message):
    with pytest.raises(ExperimentError, match=re.escape(message)):
        validate_data(tiny_experiment(**change))


def test_export_selects_runs_without_changing_them():
    plain = {r.run_id for r in expand(validate_data(tiny_experiment()))}
    exp = validate_data(tiny_experiment(export={"runs": [{"method": "lora"}, {}]}))
    from tunebench.matrix import exported_runs

    assert {r.run_id for r in expand(exp)} == plain  # exporting is not part of a run's id
    assert len(exported_runs(exp, expand(exp))) == 2  # [{}] is every run, each once


def test_spelling_out_a_default_keeps_the_id():
    """Ids hash non-default settings, so a new setting with a default orphans no results."""
    before = sorted(r.run_id for r in runs_of(tiny_experiment()))
    exp = tiny_experiment()
    exp["training"]["optimizer"] = "adamw_torch"
    exp["methods"][1]["dropout"] = 0.0
    assert sorted(r.run_id for r in runs_of(exp)) == before
