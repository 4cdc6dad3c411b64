"""backend: unsloth — validation, and real training with Unsloth's FastLanguageModel in its own
environment (created on demand by the workflow, cached by lock hash in ~/.cache/tunebench/envs;
the first creation takes about 2.5 minutes)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, tiny_experiment
from helpers import tunebench
from pydantic import ValidationError

from tunebench import layout
from tunebench.envs import locks
from tunebench.io import sha256_file
from tunebench.matrix import expand
from tunebench.spec import Experiment

pytestmark = pytest.mark.slow  # creates the Unsloth environment and runs a workflow

UNSLOTH_LOCK = REPO / "containers" / "locks" / "unsloth-cpu.txt"


def test_backend_is_an_axis_and_hf_ids_do_not_change():
    plain = Experiment.model_validate(tiny_experiment())
    both = tiny_experiment()
    both["methods"][1]["backend"] = ["hf", "unsloth"]
    runs = expand(Experiment.model_validate(both))
    assert [r.backend for r in runs] == ["hf", "hf", "unsloth"]
    # The hf runs keep the ids they had before the axis existed; the unsloth run is its own.
    assert [r.run_id for r in runs[:2]] == [r.run_id for r in expand(plain)]
    assert "-lora-unsloth-r4-" in runs[2].run_id
    assert runs[2].axes()["backend"] == "unsloth"


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"method": "dora", "ranks": [4], "backend": "unsloth"}, "does not support method 'dora'"),
        (
            {
                "method": "qlora",
                "ranks": [4],
                "backend": ["hf", "unsloth"],
                "quantization": {"quant_type": ["nf4", "fp4"]},
            },
            "nf4 and double quantisation only",
        ),
        ({"method": "lora", "ranks": [4], "backend": "vllm"}, "'hf' or 'unsloth'"),
        ({"method": "lora", "ranks": [4], "backend": ["hf", "hf"]}, "twice"),
    ],
)
def test_unsupported_combinations_are_rejected_at_validation(method, message):
    exp = tiny_experiment(methods=[method])
    with pytest.raises(ValidationError, match=message) as err:
        Experiment.model_validate(exp)
    assert err.value.errors()[0]["loc"][:2] == ("methods", 0)


@pytest.fixture(scope="module")
def unsloth_run(tmp_path_factory):
    """LoRA on both backends, QLoRA and full fine-tuning on Unsloth: one workflow run."""
    work = tmp_path_factory.mktemp("unsloth")
    exp = tiny_experiment(name="unsloth")
    exp["methods"] = [
        {"method": "lora", "ranks": [4], "learning_rate": 5e-3, "backend": ["hf", "unsloth"]},
        {
            "method": "qlora",
            "ranks": [4],
            "learning_rate": 5e-3,
            "backend": "unsloth",
            "quantization": {"compute_dtype": "float32"},
        },
        {"method": "full", "learning_rate": 2e-3, "backend": "unsloth"},
    ]
    path = work / "unsloth.yaml"
    path.write_text(yaml.safe_dump(exp))
    result = tunebench(work, "run", str(path), "--", "--cores", "2", timeout=1500)
    return work, Experiment.model_validate(exp), result


def train_result(work: Path, run_id: str) -> dict:
    root = work / layout.results_root("unsloth")
    return json.loads((root / layout.TRAIN_RESULT.format(run_id=run_id)).read_text())


def test_unsloth_rows_sit_beside_hf_rows(unsloth_run):
    work, exp, result = unsloth_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (locks.env_dir(UNSLOTH_LOCK) / locks.RECORD).is_file()
    table = pd.read_csv(work / "results" / "unsloth" / "comparison.csv")
    runs = table[table["method"] != "base"]
    assert sorted(zip(runs["method"], runs["backend"], strict=True)) == [
        ("full", "unsloth"),
        ("lora", "hf"),
        ("lora", "unsloth"),
        ("qlora", "unsloth"),
    ]
    assert (runs["status"] == "ok").all(), runs[["run_id", "status", "reason"]]
    # Same metrics on both backends, from the same evaluator.
    lora = runs[runs["method"] == "lora"].set_index("backend")
    for column in ("exact_match", "test_loss", "trainable_params", "train_seconds"):
        assert lora[column].notna().all(), column
    assert lora.loc["unsloth", "trainable_params"] == lora.loc["hf", "trainable_params"]


def test_unsloth_trains_in_its_own_locked_environment(unsloth_run):
    work, exp, _ = unsloth_run
    for run in expand(exp):
        result = train_result(work, run.run_id)
        provenance = result["provenance"]
        environment = provenance["environment"]
        assert provenance["container_image"] == "host"
        assert environment["drift"] == [], environment["drift"]
        assert result["train_loss_last"] < result["train_loss_first"], run.run_id
        if run.backend == "unsloth":
            assert environment["lock"] == "unsloth-cpu.txt"
            assert environment["lock_sha256"] == sha256_file(UNSLOTH_LOCK)
            assert provenance["packages"]["unsloth"] == "2026.10.9"
            assert provenance["packages"]["transformers"] == "5.17.0"
        else:
            assert environment["lock"] == "hf-cpu.txt"
            assert "unsloth" not in provenance["packages"]
    qlora = train_result(work, next(r for r in expand(exp) if r.method == "qlora").run_id)
    full = train_result(work, next(r for r in expand(exp) if r.method == "full").run_id)
    # 4-bit weights are counted unpacked: QLoRA's base is the full model, plus its adapters.
    assert qlora["total_params"] - qlora["trainable_params"] == full["total_params"]
    assert full["trainable_params"] == full["total_params"]


def test_without_a_gpu_and_without_the_cpu_fallback_the_run_is_a_failed_row(
    unsloth_run, tiny_model, tiny_data, tmp_path
):
    """UNSLOTH_DISABLE_CPU_FALLBACK=1 (set in the Unsloth image, for GPU clusters): a node
    without a GPU gives a failed row that says so, not a silent CPU run."""
    _, exp, _ = unsloth_run
    run = next(r for r in expand(exp) if r.backend == "unsloth" and r.method == "lora")
    spec, model_dir = tiny_model
    _, _, tokenized = tiny_data
    result_path = tmp_path / "result.json"
    command = [
        str(locks.env_dir(UNSLOTH_LOCK) / "bin" / "python"),
        "-m",
        "tunebench",
        "stage",
        "train",
        "--run",
        run.model_copy(update={"model": spec}).model_dump_json(),
        f"--model-dir={model_dir}",
        "--tokenized",
        str(tokenized),
        "--run-dir",
        str(tmp_path / "run"),
        "--result",
        str(result_path),
        "--tracking",
        "{}",
        "--memory-limit-mb",
        "0",
        "--threads",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "UNSLOTH_DISABLE_CPU_FALLBACK": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(result_path.read_text())
    assert result["status"] == "failed"
    assert "GPU" in result["reason"] or "accelerator" in result["reason"], result["reason"]
