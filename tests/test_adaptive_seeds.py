"""Adaptive seeds (training.seeds: {adaptive: ...}, search/seeds.py): the pure decision per
round, the validation errors, and one workflow that adds seeds only where its decisions say."""

from __future__ import annotations

import pytest
from conftest import tiny_experiment

from tunebench import layout
from tunebench.experiment import ExperimentError, validate_data, validate_matrix
from tunebench.io import read_json
from tunebench.matrix import expand
from tunebench.search import seeds
from tunebench.spec import AdaptiveSeedRule

RULE = AdaptiveSeedRule(max=4, target_p_best=0.9, first=2)


def one_group(p: dict, n: int = 2):
    return {"words": p}, dict.fromkeys(p, n)


# ---------------------------------------------------------------- the decision


def test_a_clear_winner_stops_after_the_first_round():
    groups, counts = one_group({"a": 0.96, "b": 0.04})
    verdicts = seeds.decide(groups, counts, RULE, 0)
    assert {k: v.decision for k, v in verdicts.items()} == {"a": "stop", "b": "stop"}
    assert verdicts["a"].kind == "decided" and verdicts["b"].kind == "behind"
    assert "reached the target after round 0" in seeds.reason(verdicts["a"])


def test_two_close_configurations_get_seeds_up_to_max_and_no_further():
    """Rounds with the same P(best): each adds one seed to both, until both have `max`."""
    counts = {"a": 2, "b": 2}
    added_rounds = 0
    for k in range(10):
        verdicts = seeds.decide({"words": {"a": 0.55, "b": 0.45}}, counts, RULE, k)
        adds = [key for key, v in verdicts.items() if v.decision == "add"]
        if not adds:
            break
        assert sorted(adds) == ["a", "b"]
        counts = {key: n + (key in adds) for key, n in counts.items()}
        added_rounds += 1
    assert counts == {"a": RULE.max, "b": RULE.max} and added_rounds == RULE.max - RULE.first
    assert {v.kind for v in verdicts.values()} == {"max"}
    text = seeds.reason(verdicts["b"], {"a": "m lora r4"}.get)
    assert text == "max seeds reached at round 2, P(best) 0.45 against m lora r4's 0.55"


def test_configurations_far_behind_get_no_seed():
    verdicts = seeds.decide(
        {"words": {"a": 0.6, "b": 0.38, "c": 0.02}}, {"a": 2, "b": 2, "c": 2}, RULE, 1
    )
    assert {k: v.decision for k, v in verdicts.items()} == {"a": "add", "b": "add", "c": "stop"}
    assert seeds.reason(verdicts["c"]) == "P(best) 0.02 after round 1: out of contention"
    assert seeds.reason(verdicts["b"], str.upper) == (
        "still in contention with A at round 1 (P(best) 0.38 against 0.60)"
    )


def test_each_dataset_competes_alone_and_max_runs_goes_to_the_likeliest_first():
    groups = {"words": {"a": 0.5, "b": 0.5}, "other": {"c": 0.97, "d": 0.03}}
    counts = dict.fromkeys("abcd", 2)
    verdicts = seeds.decide(groups, counts, RULE, 0)
    assert [k for k, v in verdicts.items() if v.decision == "add"] == ["a", "b"]
    budget = AdaptiveSeedRule(max=4, first=2, max_runs=9)  # room for one more run
    verdicts = seeds.decide(groups, counts, budget, 0)
    assert verdicts["a"].decision == "add", "ties go to the smaller key"
    assert verdicts["b"].kind == "budget" and verdicts["b"].decision == "stop"


def test_a_configuration_without_scores_is_not_ranked_and_gets_no_seed():
    verdicts = seeds.decide(
        {"words": {"a": 0.6, "b": 0.4, "c": None}}, dict.fromkeys("abc", 2), RULE, 0, {"c": "oom"}
    )
    assert verdicts["c"].decision == "stop" and seeds.reason(verdicts["c"]).endswith(": oom")
    assert verdicts["a"].kind == "leads" and verdicts["b"].kind == "contention"
    assert seeds.reason(verdicts["a"]) == "leads at round 0 with P(best) 0.60, below the target"


# ---------------------------------------------------------------- the experiment


def adaptive(rule: dict, **overrides) -> dict:
    exp = tiny_experiment(**overrides)
    exp["training"]["seeds"] = {"adaptive": rule}
    return exp


def test_a_first_round_is_the_runs_a_list_of_its_seeds_gives_and_added_seeds_keep_their_ids():
    exp = validate_data(adaptive({"max": 3, "first": 2}))
    listed = tiny_experiment()
    listed["training"]["seeds"] = [0, 1, 2]
    every = {r.run_id for r in expand(validate_data(listed))}
    assert {r.run_id for r in seeds.every_seed(exp)} == every
    assert {r.seed for r in expand(exp)} == {0, 1}, "the first round trains seeds 0 and 1"


@pytest.mark.parametrize(
    ("rule", "overrides", "message"),
    [
        ({"max": 1}, {}, "training.seeds.adaptive.max: Input should be greater than or equal to 2"),
        ({"max": 3, "target_p_best": 0.5}, {}, "training.seeds.adaptive.target_p_best"),
        ({"max": 3, "target_p_best": 1.5}, {}, "training.seeds.adaptive.target_p_best"),
        ({"max": 3, "first": 4}, {}, "training.seeds.adaptive: .*first \\(4\\) is above max"),
        (
            {"max": 3},
            {"search": {"budget": {"steps": 1000}}},
            "training.seeds.adaptive and search cannot be combined",
        ),
        (
            {"max": 3},
            {
                "methods": [
                    {
                        "method": "lora",
                        "ranks": [4],
                        "learning_rate": {"low": 1e-4, "high": 1e-2, "points": 3},
                    }
                ]
            },
            "training.seeds.adaptive and methods\\[0\\].learning_rate, a range",
        ),
        ({"max": 3}, {"report": {"metric": "bleu"}}, "training.seeds.adaptive ranks .* 'bleu'"),
    ],
)
def test_bad_adaptive_seed_rules_are_errors_naming_the_key(rule, overrides, message):
    exp = adaptive(rule, **overrides)
    if "report" in overrides:
        exp["datasets"][0]["evaluation"] = {"metrics": ["exact_match", "bleu"]}
    with pytest.raises(ExperimentError, match=message):
        validate_matrix(exp, "test")


# ---------------------------------------------------------------- one workflow, end to end


@pytest.mark.slow
def test_a_workflow_adds_seeds_only_where_its_decisions_say(tmp_path):
    """Bare `snakemake -n` plans the first round and its decision; `tunebench run` then trains
    the seeds the decisions add and no other. Two built-in models of the same content train
    the same way, so they are tied (P(best) near 0.5 each) and both in contention until `max`
    (the target of 1 and floor of 0 keep that so even if their scores differed a little)."""
    import pandas as pd
    import yaml
    from helpers import tunebench
    from test_workflow import planned_jobs, snakemake_dry_run

    exp = adaptive(
        {"max": 2, "first": 1, "target_p_best": 1, "min_p_best": 0},
        methods=[{"method": "lora", "ranks": [4], "learning_rate": 5e-3}],
    )
    exp["models"].append({**exp["models"][0], "name": "twin"})
    exp["training"]["max_steps"] = 4
    exp["evaluation"] = {"max_new_tokens": 2, "max_examples": 6}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    jobs = planned_jobs(snakemake_dry_run(tmp_path, path))
    assert jobs["train"] == 2 and jobs["seeds_round"] == 1, jobs

    done = tunebench(tmp_path, "run", "exp.yaml", "--", "--cores", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parsed = validate_data(exp)
    root = tmp_path / "results" / "tiny"
    decisions = seeds.rounds(root)
    added = {run_id for d in decisions for run_id in d["added_runs"]}
    assert len(decisions) == 2 and len(added) == 2, decisions
    assert not decisions[-1]["added_runs"]
    assert {c["kind"] for c in decisions[0]["configurations"]} == {"leads", "contention"}
    assert {c["kind"] for c in decisions[-1]["configurations"]} == {"max"}
    # Trained: the first round and the added seeds, nothing else.
    trained = {
        r.run_id
        for r in seeds.every_seed(parsed)
        if (root / layout.TRAIN_RESULT.format(run_id=r.run_id)).is_file()
    }
    assert trained == {r.run_id for r in expand(parsed)} | added
    # A rerun decides the same from the same results.
    assert seeds.decide_on_disk(parsed, 0, root) == read_json(seeds.round_path(root, 0))

    table = pd.read_csv(root / "comparison.csv")
    assert set(table["run_id"]) >= trained and len(table[table["method"] != "base"]) == 4
    recommendation = (root / "recommendation.md").read_text()
    assert "## Seeds per configuration" in recommendation
    assert "- twin lora r4: 2 seeds: max seeds reached at round 1, P(best) 0." in recommendation
    assert "- m lora r4: 2 seeds: max seeds reached at round 1" in recommendation
