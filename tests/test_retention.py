"""Retention (evaluation.retention): the scores against losses computed by hand on a tiny model,
a set that fails to score as the row's reason, the budget's exclusion, the chart's front, and
the bad inputs, each refused naming its key. The default workflow's rows carry retention:
tests/test_workflow.py (the shared finished workflow)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from conftest import tiny_experiment
from test_recommend import table_of

from tunebench import retention, retention_scoring
from tunebench.builtin import wordops
from tunebench.data.templates import render
from tunebench.experiment import ExperimentError, validate_data
from tunebench.reporting import charts, configurations, recommend
from tunebench.spec import Retention


@pytest.fixture(scope="module")
def loaded(tiny_model, tiny_data):
    from tunebench import models

    spec, folder = tiny_model
    tokenizer = models.load_tokenizer(spec, str(folder))
    model = models.load_base_model(spec, str(folder), torch.float32).eval()
    return spec, model, tokenizer, tiny_data[0]


def hand_loss(model, sequences: list[tuple[list[int], int]]) -> float:
    """Token-weighted mean -log p of each sequence's tokens from position `start` on, one
    sequence at a time (no batching, no padding)."""
    total, count = 0.0, 0
    for ids, start in sequences:
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        for t in range(max(start, 1), len(ids)):
            total -= logp[t - 1, ids[t]].item()
            count += 1
    return total / count


def test_builtin_sets_are_held_out_of_the_pretraining_corpus(loaded):
    spec = loaded[0]
    corpus = set(wordops.make_lexicon(spec.builtin.corpus_words, seed=spec.builtin.corpus_seed))
    words = retention_scoring._heldout_words(spec.builtin)
    assert len(words) == retention_scoring.BUILTIN_WORDS and not corpus & set(words)
    choice = retention_scoring.builtin_rows("choice", spec.builtin)
    assert {r["answer_index"] for r in choice} == {0, 1, 2, 3}  # the answer is not always first


def test_text_and_instruction_losses_match_a_hand_computed_loss(loaded):
    spec, model, tokenizer, dataset = loaded
    text = retention_scoring.builtin_rows("text", spec.builtin)[:5]
    # Batched with padding (rows differ in length) against one row at a time by hand.
    got = retention_scoring.score_set(model, tokenizer, text, "text", dataset, batch_size=3)
    by_hand = hand_loss(model, [(tokenizer(r["text"])["input_ids"], 1) for r in text])
    assert got == pytest.approx(by_hand, rel=1e-5)

    pairs = retention_scoring.builtin_rows("instructions", spec.builtin)[:4]
    sequences = []
    for row in pairs:
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"]},
        ]
        rendered = render({"messages": messages}, tokenizer, dataset.template)
        prompt = tokenizer(rendered.prompt, add_special_tokens=False)["input_ids"]
        response = tokenizer(rendered.response, add_special_tokens=False)["input_ids"]
        sequences.append((prompt + response, len(prompt)))  # the response's tokens only
    got = retention_scoring.score_set(
        model, tokenizer, pairs, "instructions", dataset, batch_size=4
    )
    assert got == pytest.approx(hand_loss(model, sequences), rel=1e-5)


def test_choice_accuracy_is_the_share_of_most_likely_right_answers(loaded):
    spec, model, tokenizer, dataset = loaded
    rows = retention_scoring.builtin_rows("choice", spec.builtin)[:6]
    right = 0
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        scores = []
        for choice in row["choices"]:
            ids = tokenizer(choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
            scores.append(sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(ids)))
        right += max(range(len(scores)), key=scores.__getitem__) == row["answer_index"]
    got = retention_scoring.score_set(model, tokenizer, rows, "choice", dataset, batch_size=8)
    assert got == pytest.approx(right / len(rows))


def test_a_set_that_fails_to_score_is_the_rows_reason(loaded, tmp_path):
    spec, model, tokenizer, dataset = loaded
    own = tmp_path / "mine.jsonl"
    own.write_text(json.dumps({"text": "the word b a k o ends with o ."}) + "\n")
    settings = Retention(sets=["text", {"name": "mine", "path": str(own)}])
    own.unlink()  # gone after validation: scoring it fails, the other set still counts
    scores = retention_scoring.score(model, tokenizer, spec, dataset, settings, batch_size=8)
    assert math.isfinite(scores["retention_text_loss"]) and scores["retention_seconds"] > 0
    assert "retention_mine_loss" not in scores
    assert "retention set mine" in scores["reason"] and "no such file" in scores["reason"]
    off = Retention(enabled=False)
    assert retention.measures(off) == {}
    assert retention_scoring.score(model, tokenizer, spec, dataset, off, batch_size=8) == {}


def bad(**overrides) -> str:
    with pytest.raises(ExperimentError) as err:
        validate_data(tiny_experiment(**overrides))
    return str(err.value)


def test_bad_inputs_are_refused_naming_the_key(tmp_path):
    missing = bad(evaluation={"retention": {"sets": ["text", {"name": "x", "path": "nope.jsonl"}]}})
    assert "evaluation.retention.sets[1].path" in missing and "no such file" in missing
    unreadable = tmp_path / "bad.jsonl"
    unreadable.write_text('{"text": "fine"}\n{"question": "no kind"}\n')
    message = bad(evaluation={"retention": {"sets": [{"name": "x", "path": str(unreadable)}]}})
    assert "evaluation.retention.sets[0].path" in message and "bad.jsonl:2" in message
    assert "evaluation.retention.sets[0]" in bad(evaluation={"retention": {"sets": ["trivia"]}})

    def budget(limit: dict, retention_settings=None) -> dict:
        evaluation = {"retention": retention_settings} if retention_settings else {}
        return {
            "report": {"budgets": [{"name": "b", "max_forgetting": limit}]},
            "evaluation": evaluation,
        }

    off = bad(**budget({"measure": "retention_text_loss", "limit": 0.1}, {"enabled": False}))
    assert "report.budgets[0].max_forgetting.measure" in off and "enabled is false" in off
    unscored = bad(
        **budget({"measure": "retention_choice_accuracy", "limit": 0.1}, {"sets": ["text"]})
    )
    assert "report.budgets[0].max_forgetting.measure" in unscored
    negative = bad(**budget({"measure": "retention_text_loss", "limit": -0.1}))
    assert "report.budgets[0].max_forgetting.limit" in negative
    over = bad(**budget({"measure": "retention_choice_accuracy", "limit": 1.5}))
    assert "report.budgets[0].max_forgetting.limit" in over and "0 to 1" in over
    # Within range and scored: accepted.
    validate_data(tiny_experiment(**budget({"measure": "retention_choice_accuracy", "limit": 1})))


RETAINED = ("exact_match", "retention_text_loss", "retention_choice_accuracy")


def forgetting_table():
    """Three configurations (two seeds each) against a base: full gains most and forgets most,
    lora r8 gains less and forgets little, lora r2 gains least and forgets nothing."""
    runs = []
    for seed in (0, 1):
        wobble = 0.01 * seed
        runs += [
            {"method": "full", "seed": seed, "exact_match": 0.9 + wobble, "text": 0.30 + wobble},
            {"method": "lora", "rank": 8, "seed": seed, "exact_match": 0.8, "text": 0.04},
            {"method": "lora", "rank": 2, "seed": seed, "exact_match": 0.5, "text": -0.01},
        ]
    table = table_of(
        [
            r
            | {"retention_text_loss": 2.0 + r["text"], "retention_choice_accuracy": 0.6 - r["text"]}
            for r in runs
        ],
        RETAINED,
    )
    # table_of's baseline is 0.1 below every metric: retention deltas are set here instead.
    table["delta_retention_text_loss_vs_base"] = [r["text"] for r in runs]
    table["delta_retention_choice_accuracy_vs_base"] = [-r["text"] for r in runs]
    return table


def test_a_forgetting_budget_excludes_and_says_by_how_much():
    limit = {"measure": "retention_text_loss", "limit": 0.05}
    exp = validate_data(
        tiny_experiment(
            report={"budgets": [{"name": "any"}, {"name": "keep", "max_forgetting": limit}]}
        )
    )
    configs = configurations.configurations(forgetting_table(), exp.report.confidence)
    free, kept = recommend.recommend(configs, exp)
    assert free.best.configuration == "m full" and math.isnan(free.best.forgot)
    assert kept.best.configuration == "m lora r8"
    assert kept.best.forgot == pytest.approx(0.04)
    ((name, why),) = kept.excluded
    assert name == "m full" and "forgot 0.305 in retention_text_loss > 0.05" in why
    text = recommend.markdown([free, kept], exp)
    assert "forgetting <= 0.05 in retention_text_loss" in text and "forgot +0.04" in text
    # The same limit on an accuracy: its fall is the forgetting.
    limit = {"measure": "retention_choice_accuracy", "limit": 0.05}
    exp = validate_data(
        tiny_experiment(report={"budgets": [{"name": "k", "max_forgetting": limit}]})
    )
    (answer,) = recommend.recommend(configs, exp)
    assert answer.best.configuration == "m lora r8" and answer.best.forgot == pytest.approx(0.04)


def test_the_chart_marks_the_front_of_gain_against_forgetting():
    exp = validate_data(tiny_experiment())
    table = forgetting_table()
    # lora r2 forgets more than lora r8 for less gain: off the front.
    table.loc[table["rank"] == 2, "delta_retention_text_loss_vs_base"] = 0.5
    configs = configurations.configurations(table, exp.report.confidence)
    assert charts.forgetting_measure(configs, exp) == "retention_text_loss"
    chart = charts.forgetting(configs, "exact_match", True, exp).to_dict()
    frames = [pd.DataFrame(d) for d in chart["datasets"].values() if d and "quality" in d[0]]
    points, front = sorted(frames, key=len, reverse=True)
    assert set(points["configuration"]) == {"m full", "m lora r8", "m lora r2"}
    assert set(front["configuration"]) == {"m full", "m lora r8"}
    full = points.set_index("configuration").loc["m full"]
    assert full["forgot"] == pytest.approx(0.305) and full["quality"] == pytest.approx(0.805)
