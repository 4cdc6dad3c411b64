"""Successive halving under a budget (search:, search/halving.py): the pure promotion
decision, the plan and its budget, the experiment's errors, a rung as a prefix of the run
trained alone, and one end-to-end search through `tunebench run` (killed, resumed, continued)."""

from __future__ import annotations

import math

import pytest
from conftest import tiny_experiment
from helpers import METHODS, run_for

from tunebench import layout, stages
from tunebench.experiment import ExperimentError, validate_data, validate_matrix
from tunebench.io import read_json
from tunebench.matrix import expand
from tunebench.search import halving
from tunebench.search.halving import Candidate, promote
from tunebench.spec import Tracking

LR_RANGE = {"low": 1e-3, "high": 1e-2, "points": 3}


def searching(budget: dict, methods=None, **search) -> dict:
    """Two methods with three learning rates each, 8 steps, rungs at 4 and 8."""
    methods = methods or [
        {"method": "full", "learning_rate": {"low": 1e-4, "high": 1e-3, "points": 3}},
        {"method": "lora", "ranks": [4], "learning_rate": LR_RANGE},
    ]
    exp = tiny_experiment(methods=methods)
    exp["training"]["max_steps"] = 8
    exp["search"] = {"budget": budget, "eta": 2, "min_steps": 4, **search}
    return exp


# ---------------------------------------------------------------- the promotion decision


def c(key, bracket, score, status="ok"):
    return Candidate(key, bracket, score, status)


def test_the_best_of_each_method_go_on_whatever_the_other_method_scores():
    """Fairness: full fine-tuning's worse losses do not cost it its promotion."""
    candidates = [
        c("lora-a", "lora", 1.0),
        c("lora-b", "lora", 0.5),
        c("lora-c", "lora", 0.7),
        c("full-a", "full", 3.0),
        c("full-b", "full", 2.0),
    ]
    decided = promote(candidates, {"lora": 1, "full": 1})
    assert decided == {
        "lora-a": "pruned",
        "lora-b": "promoted",
        "lora-c": "pruned",
        "full-a": "pruned",
        "full-b": "promoted",
    }
    two = promote(candidates, {"lora": 2, "full": 1})
    assert {k for k, d in two.items() if d == "promoted"} == {"lora-b", "lora-c", "full-b"}


def test_ties_go_to_the_smaller_key_whatever_order_results_arrive_in():
    candidates = [c("b", "m", 1.0), c("a", "m", 1.0), c("c", "m", 2.0)]
    first = promote(candidates, {"m": 1})
    assert first == promote(list(reversed(candidates)), {"m": 1})
    assert first["a"] == "promoted" and first["b"] == "pruned"


def test_a_failed_run_is_its_own_row_and_its_method_goes_on_without_it():
    candidates = [
        c("best-but-oom", "m", None, "oom"),
        c("nan", "m", math.nan),
        c("ok", "m", 2.0),
        c("worse", "m", 3.0),
    ]
    decided = promote(candidates, {"m": 1})
    assert decided == {"best-but-oom": "oom", "nan": "pruned", "ok": "promoted", "worse": "pruned"}
    # Not even a large keep promotes what has no score.
    everything = promote(candidates, {"m": 5})
    assert everything["best-but-oom"] == "oom" and everything["nan"] == "pruned"
    assert promote([c("x", "m", None, "failed")], {"m": 1}) == {"x": "failed"}


def test_what_a_smaller_budget_already_trained_stays_promoted():
    """A configuration that already has the next rung's result keeps its place: a larger
    budget adds promotions, it never undoes one."""
    candidates = [c("a", "m", 1.0), c("b", "m", 0.9), c("c", "m", 0.8)]
    decided = promote(candidates, {"m": 1}, frozenset({"a"}))
    assert decided == {"a": "promoted", "b": "pruned", "c": "promoted"}


# ---------------------------------------------------------------- rungs and plan


def test_rungs_are_steps_of_the_full_run_eta_apart():
    assert halving.rung_steps(8, 2, 4) == [4, 8]
    assert halving.rung_steps(8, 2) == [2, 4, 8]
    assert halving.rung_steps(100, 3) == [11, 33, 100]
    assert halving.rung_steps(5, 3, 5) == [5]


def test_a_larger_budget_never_promotes_fewer_and_stops_at_one_in_eta():
    steps = [11, 33, 100]
    before = None
    for share in range(9 * 11 + 89, 2000, 37):
        counts = halving.counts_within(9, steps, 3, share, 1.0)
        assert counts[0] == 9 and all(n >= 1 for n in counts)
        assert sum(n * s for n, s in zip(counts, halving.segments(steps), strict=True)) <= share
        if before is not None:
            assert all(n >= m for n, m in zip(counts, before, strict=True))
        before = counts
    assert before == [9, 3, 1]


def test_the_plan_gives_each_method_the_same_share_and_costs_less_than_the_grid():
    exp, runs = validate_matrix(searching({"steps": 40}), "test")
    plan = halving.plan_for(exp, runs)
    assert plan.steps == [4, 8] and set(plan.brackets) == {"m words full", "m words lora"}
    assert [b.counts for b in plan.brackets.values()] == [[3, 2], [3, 2]]
    assert plan.cost == 40 and plan.full_cost == 48 and plan.minimum == 32


def test_a_budget_in_gpu_hours_is_costed_by_the_estimator():
    """Each method's share buys steps at its own predicted step cost: full fine-tuning's steps
    cost more than LoRA's, so the same share promotes no more of them."""
    exp, runs = validate_matrix(searching({"steps": 40}), "test")
    costs = halving.estimate_step_costs(
        exp.model_copy(update={"search": exp.search.model_copy(update={"budget": _hours(1)})}),
        runs,
    )
    assert all(cost > 0 for cost in costs.values()) and len(costs) == 6
    minimum = halving.plan(
        exp.model_copy(update={"search": exp.search.model_copy(update={"budget": _hours(1e6)})}),
        runs,
        costs,
    ).minimum
    small = exp.model_copy(
        update={"search": exp.search.model_copy(update={"budget": _hours(minimum * 0.9)})}
    )
    with pytest.raises(halving.BudgetTooSmall, match="needs at least") as err:
        halving.plan(small, runs, costs)
    assert err.value.key == "search.budget.gpu_hours"
    enough = small.model_copy(
        update={"search": exp.search.model_copy(update={"budget": _hours(minimum)})}
    )
    plan = halving.plan(enough, runs, costs)
    assert plan.cost <= minimum * (1 + 1e-9) and plan.cost < plan.full_cost


def _hours(value: float):
    from tunebench.spec import SearchBudget

    return SearchBudget(gpu_hours=value)


def test_decisions_on_disk_make_pruned_and_failed_rows(tmp_path):
    """The rung results of a search, as the train jobs write them (one run out of memory):
    the decision promotes the best of each method, and the table keeps every run as a row."""
    from tunebench.io import write_json
    from tunebench.reporting.report import comparison_table, pruned_runs

    exp, runs = validate_matrix(searching({"steps": 32}), "test")
    scores = dict(zip(sorted(r.run_id for r in runs), [3.0, 2.0, 1.0, 0.5, 0.4, 0.6], strict=True))
    oom = min(r.run_id for r in runs if r.method == "lora")
    for run_id, score in scores.items():
        result = {"run_id": run_id, "status": "ok", "validation_loss": score, "rung_step": 4}
        if run_id == oom:  # the best score, were it not out of memory
            result = {"run_id": run_id, "status": "oom", "reason": "CUDA out of memory"}
        write_json(tmp_path / layout.RUNG_RESULT.format(run_id=run_id, step=4), result)
    decision = halving.decide(exp, runs, 0, tmp_path)
    assert decision["keep"] == {"m words full": 1, "m words lora": 1}
    by_method = {
        m: sorted((r for r in runs if r.method == m), key=lambda r: scores[r.run_id])
        for m in ("full", "lora")
    }
    lora_ok = [r.run_id for r in by_method["lora"] if r.run_id != oom]
    assert decision["promoted_runs"] == sorted([by_method["full"][0].run_id, lora_ok[0]])
    write_json(halving.decision_path(tmp_path, 0), decision)
    # Same results, same decision: a rerun decides nothing new.
    assert halving.decide(exp, runs, 0, tmp_path) == decision

    table = comparison_table(exp, tmp_path).set_index("run_id")
    assert table.loc[oom, "status"] == "oom" and "out of memory" in table.loc[oom, "reason"]
    pruned = table[table["status"] == "pruned"]
    assert sorted(pruned.index) == sorted([r.run_id for r in by_method["full"][1:]] + lora_ok[1:])
    assert (pruned["stopped_at_step"] == 4).all()
    assert pruned["validation_loss"].to_dict() == {k: scores[k] for k in pruned.index}
    shown = pruned_runs(table.reset_index())
    assert all(f"`{run_id}`: step 4" in shown for run_id in pruned.index) and oom not in shown


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e["search"]["budget"].update(steps=20), "search.budget.steps"),
        (
            # Learning rates as a list: a search without any learning-rate range.
            lambda e: e.update(
                methods=[{"method": "lora", "ranks": [4], "learning_rate": [1e-3, 1e-2]}],
                datasets=[{**e["datasets"][0], "validation_fraction": 0}],
            ),
            "search ranks runs on the validation split",
        ),
        (lambda e: e["search"].update(metric="rouge_l"), "search.metric 'rouge_l' is not scored"),
        (lambda e: e["search"].update(metric="exact_match"), "scored on test only"),
        (
            lambda e: e["training"].update(max_steps=None, epochs=1),
            "search needs training.max_steps",
        ),
        (lambda e: e["search"].update(budget={"steps": 40, "money": 1}), "search.budget"),
    ],
)
def test_bad_search_input_is_an_error_naming_its_key(change, message):
    exp = searching({"steps": 40})
    exp["datasets"][0]["evaluation"] = {"metrics": ["exact_match"]}
    change(exp)
    with pytest.raises(ExperimentError, match=message.replace("(", r"\(")) as err:
        validate_matrix(exp, "test")
    if "budget.steps" in message:
        # The smallest budget that works: every configuration to step 4, one on to step 8.
        assert "needs at least 32 steps" in str(err.value)


# ---------------------------------------------------------------- a rung is a prefix of the run


def test_a_run_stopped_at_a_rung_and_resumed_ends_as_the_run_trained_alone(
    tiny_model, tiny_data, tmp_path
):
    """The schedule is the full run's: stopping at steps 2 and 4 (a checkpoint with optimizer,
    scheduler and RNG) and resuming to 8 gives the weights and loss of the 8 steps alone. Each
    rung keeps only its own checkpoint, and the finished run keeps none: its model is saved."""
    from safetensors.torch import load_file

    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["lora"], max_steps=8, logging_steps=1)

    def train(run_dir, result, stop_at_step=0):
        return stages.train(
            run=run,
            tokenized=tokenized,
            run_dir=run_dir,
            result=result,
            tracking=Tracking(),
            model_dir=model_dir,
            threads=2,
            stop_at_step=stop_at_step,
        )

    alone = train(tmp_path / "alone", tmp_path / "alone.json")
    searched = tmp_path / "searched"
    assert train(searched, tmp_path / "first.json", stop_at_step=2)["status"] == "ok"
    rung = train(searched, tmp_path / "rung.json", stop_at_step=4)
    assert rung["status"] == "ok" and rung["rung_step"] == 4 and rung["validation_loss"]
    assert rung["resumed_from_step"] == 2
    checkpoints = layout.checkpoints_in(searched)
    assert [p.name for p in checkpoints.glob("checkpoint-*")] == ["checkpoint-4"], "2 dropped"
    assert (checkpoints / "checkpoint-4" / "optimizer.pt").is_file()
    assert not (searched / "model").exists(), "a rung leaves a checkpoint, not a model"
    resumed = train(searched, tmp_path / "end.json")
    assert resumed["status"] == "ok" and resumed["resumed_from_step"] == 4
    assert not checkpoints.exists(), "a finished run's model is saved: no checkpoint is kept"
    assert resumed["steps"] == alone["steps"] == 8
    assert resumed["validation_loss"] == pytest.approx(alone["validation_loss"], rel=1e-5)
    losses = [[h["loss"] for h in r["log_history"] if "loss" in h] for r in (alone, resumed)]
    # The log history comes back with the checkpoint: the first 4 losses are the rung's.
    assert len(losses[0]) == 8 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    weights = [
        load_file(d / "model" / "adapter_model.safetensors") for d in (tmp_path / "alone", searched)
    ]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert tensor.allclose(weights[1][name], atol=1e-6), name


# ---------------------------------------------------------------- one search, end to end


@pytest.mark.slow
def test_a_search_is_killed_resumed_and_continued_with_a_larger_budget(tmp_path):
    """Bare `snakemake -n` plans the first rung and its decision; `tunebench run` is killed once
    the first rung is decided and resumes without retraining it; a larger budget then promotes
    one more configuration, which continues from its rung checkpoint, and retrains nothing."""
    import os
    import signal
    import time

    import pandas as pd
    import yaml
    from helpers import start_run, tunebench
    from test_workflow import planned_jobs, snakemake_dry_run

    exp = searching(
        {"steps": 16}, methods=[{"method": "lora", "ranks": [4], "learning_rate": LR_RANGE}]
    )
    exp["evaluation"] = {"max_new_tokens": 4, "max_examples": 8}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    jobs = planned_jobs(snakemake_dry_run(tmp_path, path))
    assert jobs["train_rung"] == 3 and jobs["promote"] == 1 and "train" not in jobs, jobs

    runs = expand(validate_data(exp))
    root = tmp_path / "results" / "tiny"
    rungs = {r.run_id: root / layout.RUNG_RESULT.format(run_id=r.run_id, step=4) for r in runs}
    decision = root / layout.SEARCH_DECISION.format(rung=0)
    first = start_run(tmp_path, 2, tmp_path / "first.log")
    # Killed once the decision is made and its promoted run's last rung has started.
    started = root / "logs" / "train"
    try:
        deadline = time.time() + 300
        while not any(started.glob("*.log")) and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert decision.is_file() and any(started.glob("*.log")), (tmp_path / "first.log").read_text()[
        -3000:
    ]
    assert not (root / "comparison.csv").exists(), "killed before the end"
    rung_state = {run_id: (p.stat().st_mtime_ns, p.read_bytes()) for run_id, p in rungs.items()}
    (best,) = read_json(decision)["promoted_runs"]

    # A killed Snakemake leaves its lock: cleared as its error message says.
    assert tunebench(tmp_path, "run", "exp.yaml", "--", "--unlock").returncode == 0
    resumed = tunebench(tmp_path, "run", "exp.yaml", "--", "--cores", "2")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert {r: (p.stat().st_mtime_ns, p.read_bytes()) for r, p in rungs.items()} == rung_state
    finished = root / layout.TRAIN_RESULT.format(run_id=best)
    assert read_json(finished)["resumed_from_step"] == 4
    table = pd.read_csv(root / "comparison.csv").set_index("run_id")
    assert (table.loc[list(rungs), "status"] == "pruned").sum() == 2 and table.loc[
        best, "status"
    ] == "ok"
    pruned = table[table["status"] == "pruned"]
    assert (pruned["stopped_at_step"] == 4).all() and pruned["validation_loss"].notna().all()
    assert pruned["exact_match"].isna().all(), "a pruned run is never scored on test"
    best_state = finished.stat().st_mtime_ns

    exp["search"]["budget"]["steps"] = 20  # two of the three go on to step 8
    path.write_text(yaml.safe_dump(exp))
    more = tunebench(tmp_path, "run", "exp.yaml", "--", "--cores", "2")
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    promoted = read_json(decision)["promoted_runs"]
    assert len(promoted) == 2 and best in promoted
    assert {r: (p.stat().st_mtime_ns, p.read_bytes()) for r, p in rungs.items()} == rung_state
    assert finished.stat().st_mtime_ns == best_state, "a finished run is not retrained"
    (new,) = set(promoted) - {best}
    assert read_json(root / layout.TRAIN_RESULT.format(run_id=new))["resumed_from_step"] == 4
    table = pd.read_csv(root / "comparison.csv").set_index("run_id")
    assert list(table.loc[list(rungs), "status"]).count("pruned") == 1
