"""One way a failure becomes a row: the exception -> status table, and the one recorder that
every stage (pre-training, training, evaluation of runs and of baselines) writes with, tried
for each status each stage can end in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_BUILTIN
from helpers import METHODS, run_for, train

from tunebench import outcomes, stages
from tunebench.io import read_json, write_json
from tunebench.precision import cpu_isa
from tunebench.spec import BuiltinModel, DatasetSpec, Evaluation, ModelSpec


def test_a_real_failed_cpu_allocation_is_oom():
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**62, dtype=torch.uint8)  # torch's CPU allocator refuses 4 EiB
    assert outcomes.status_of(info.value) == "oom"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "oom"),
        (MemoryError(), "oom"),
        (outcomes.MemoryLimitExceeded("process memory 9 GB exceeds ..."), "oom"),
        (outcomes.ModelNotFound("model 'x': no config.json"), "missing_model"),
        (outcomes.StageFailure("training did not finish", status="skipped"), "skipped"),
        (outcomes.StageFailure("pre-training did not finish (oom)", status="oom"), "oom"),
        (ValueError("bad value"), "failed"),
        (IndexError("index out of range in self"), "failed"),
    ],
)
def test_each_exception_has_one_status(error, status):
    assert outcomes.status_of(error) == status
    assert status in outcomes.STATUSES


def test_the_recorder_writes_failures_beside_the_result_too(tmp_path):
    def work():
        raise ValueError("the reason\nand a second line")

    result = outcomes.record(tmp_path / "result.json", {"run_id": "r"}, work)
    assert result["status"] == "failed" and result["reason"] == "ValueError: the reason"
    assert read_json(tmp_path / "result.json") == json.loads(json.dumps(result))
    (kept,) = (tmp_path / "attempts").glob("*.json")
    assert read_json(kept)["reason"] == "ValueError: the reason"
    assert {"provenance", "peak_memory_gb", "wall_seconds"} <= set(result)


def test_the_next_attempt_retries_only_failures(tmp_path):
    record = tmp_path / "result.json"
    assert outcomes.next_attempt(record) == ""
    write_json(record, {"status": "oom", "attempt": ""})
    retry = outcomes.next_attempt(record)
    assert retry.startswith("retry after oom")
    write_json(record, {"status": "ok", "attempt": retry})
    assert outcomes.next_attempt(record) == retry  # unchanged after success: no rerun


# ---------------------------------------------------------------- every stage, every status

TINY = ModelSpec(name="m", builtin=BuiltinModel(**TINY_BUILTIN))
# Allocating more than the tiny ceiling is certain: the interpreter and torch alone exceed it.
CEILING_MB = 50


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_data, tmp_path_factory):
    """A finished LoRA run to evaluate."""
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run_dir = tmp_path_factory.mktemp("trained")
    run = run_for(METHODS["lora"], max_steps=3)
    assert train(run, model_dir, tokenized, run_dir)["status"] == "ok"
    return run, run_dir


def pretrain_case(status, tmp_path, tiny_model, tiny_data):
    spec = TINY.model_copy(
        update={"builtin": TINY.builtin.model_copy(update={"pretrain_steps": 3})}
    )
    tokenizer = tiny_model[1]  # the fixture saved its tokenizer beside the model
    kwargs = {"memory_limit_mb": CEILING_MB} if status == "oom" else {}
    if status == "failed":
        tokenizer = tmp_path / "empty"  # not a tokenizer folder
        tokenizer.mkdir()
    result = stages.pretrain(
        model=spec, tokenizer=tokenizer, out=tmp_path / "base", work=tmp_path / "work", **kwargs
    )
    if status == "ok":
        assert (tmp_path / "base" / "config.json").is_file()
    else:
        assert list((tmp_path / "work" / "attempts").glob("*.json"))
    return result


def train_case(status, tmp_path, tiny_model, tiny_data):
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["lora"], max_steps=3)
    kwargs = {}
    if status == "oom":
        kwargs["memory_limit_mb"] = CEILING_MB
    elif status == "failed":
        run = run.model_copy(update={"learning_rate": 1e30})  # the loss becomes non-finite
    elif status == "missing_model":
        model_dir = tmp_path / "no-such-model"
    elif status == "upstream":  # the base model's pre-training ran out of memory
        model_dir = tmp_path / "base"
        shutil.copytree(tiny_model[1], model_dir)
        write_json(model_dir / "result.json", {"status": "oom", "reason": "too big"})
    return train(run, model_dir, tokenized, tmp_path / "run", **kwargs)


def scoring(status, tmp_path, dataset, data):
    """What both evaluations are given: a tiny ceiling for `oom`; for `failed`, a choice metric
    on a dataset without choices."""
    kwargs = {
        "data": data,
        "evaluation": Evaluation(max_examples=8, max_new_tokens=4),
        "result": tmp_path / "eval.json",
        "samples": tmp_path / "samples.jsonl",
        "dataset": dataset,
    }
    if status == "oom":
        kwargs["memory_limit_mb"] = CEILING_MB
    elif status == "failed":
        kwargs["dataset"] = DatasetSpec.model_validate(
            dataset.model_dump() | {"evaluation": {"metrics": ["multiple_choice_accuracy"]}}
        )
    return kwargs


def evaluate_case(status, tmp_path, tiny_model, tiny_data, trained):
    _, model_dir = tiny_model
    dataset, data, tokenized = tiny_data
    run, run_dir = trained
    train_result = run_dir / "result.json"
    if status == "missing_model":
        model_dir = tmp_path / "no-such-model"
    elif status == "skipped":
        train_result = tmp_path / "train.json"
        write_json(train_result, {"status": "failed", "reason": "non-finite loss at step 2"})
    return stages.evaluate(
        run=run,
        train_result=train_result,
        run_dir=run_dir,
        tokenized=tokenized,
        model_dir=model_dir,
        **scoring(status, tmp_path, dataset, data),
    )


def baseline_case(status, tmp_path, tiny_model, tiny_data):
    _, model_dir = tiny_model
    dataset, data, tokenized = tiny_data
    if status == "missing_model":  # tokenisation recorded that the model was missing
        tokenized = tmp_path / "tokenized"
        stages.tokenize(
            model=ModelSpec(name="ghost", path=str(tmp_path / "not-there")),
            dataset=dataset,
            data=data,
            out=tokenized,
        )
    return stages.evaluate_base(
        model=TINY,
        tokenized=tokenized,
        model_dir=model_dir,
        **scoring(status, tmp_path, dataset, data),
    )


CASES = {
    "pretrain": (pretrain_case, ("ok", "oom", "failed")),
    # upstream: the step before failed; the run takes that step's status (here oom)
    "train": (train_case, ("ok", "oom", "failed", "missing_model", "upstream")),
    "evaluate": (evaluate_case, ("ok", "oom", "failed", "missing_model", "skipped")),
    "baseline": (baseline_case, ("ok", "oom", "failed", "missing_model")),
}


@pytest.mark.parametrize(
    ("stage", "status"),
    [(stage, status) for stage, (_, statuses) in CASES.items() for status in statuses],
)
def test_every_stage_records_every_status(stage, status, tmp_path, request):
    case, _ = CASES[stage]
    fixtures = [request.getfixturevalue(n) for n in ("tiny_model", "tiny_data")]
    if stage == "evaluate":
        fixtures.append(request.getfixturevalue("trained"))
    result = case(status, tmp_path, *fixtures)
    expected = {"upstream": "oom"}.get(status, status)
    assert result["status"] == expected, result["reason"]
    assert (result["reason"] == "") == (status == "ok")
    assert result["provenance"]["packages"]["torch"]
    written = sorted(tmp_path.rglob("*.json"))
    assert any(read_json(p).get("status") == expected for p in written)
    if stage in ("evaluate", "baseline"):
        samples = (tmp_path / "samples.jsonl").read_text().splitlines()
        assert (len(samples) == 8) == (status == "ok")


def test_a_failed_upstream_step_names_itself_in_the_reason(tmp_path, tiny_model, tiny_data):
    result = train_case("upstream", tmp_path, tiny_model, tiny_data)
    assert result["reason"].startswith("pre-training m did not finish (oom)")


def test_an_oom_during_evaluation_is_oom_not_failed(tmp_path, tiny_model, tiny_data, trained):
    result = evaluate_case("oom", tmp_path, tiny_model, tiny_data, trained)
    assert result["status"] == "oom" and "evaluation batch 1" in result["reason"]


def test_statuses_are_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for status in outcomes.STATUSES:
        assert f"`{status}`" in readme, status


@pytest.mark.slow  # a fresh interpreter: torch reads ATEN_CPU_CAPABILITY once, when imported
def test_results_record_the_kernels_that_ran_not_only_the_cpu():
    """A result trained with kernel_paths.py's narrower kernels says so in its provenance (the
    same CPU gives different numbers on each path)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from kernel_paths import NARROWER, narrower_env

    env, _ = narrower_env(dict(os.environ))
    ran = subprocess.run(
        [sys.executable, "-c", "from tunebench import measure; print(measure.hardware())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    aten, onednn, _ = NARROWER[cpu_isa()]
    assert f"'cpu_kernels': '{aten.upper()} ONEDNN_MAX_CPU_ISA={onednn}" in ran
