"""`tunebench reproduce`: the presets are valid and sourced, --list says what each needs, and
every preset passes its rehearsal end to end (a tiny model of the published family on the
fixtures); the resources mode trains the published architecture with random weights."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml
from helpers import tunebench

from tunebench import presets
from tunebench.estimate.architectures import known
from tunebench.experiment import load_experiment
from tunebench.reporting import reproduction

PRESETS = presets.names()


def test_there_are_five_presets_each_sourced_and_offline_ready():
    assert len(PRESETS) >= 5
    for name in PRESETS:
        exp = load_experiment(presets.preset_path(name))
        assert exp.reference is not None and exp.reference.mode == "full", name
        assert all(cell.source.strip() for cell in exp.reference.cells), name
        # Offline: the estimator and both smaller modes know every architecture and dataset.
        assert all(model.hub in known() for model in exp.models), name
        for hub in presets._hub_sources(exp):
            assert (presets.FIXTURES / hub.id).is_dir(), (name, hub.id)


def test_an_unknown_preset_names_the_known_ones():
    with pytest.raises(presets.PresetError, match="peft-metamathqa"):
        presets.preset_path("no-such-study")


def test_list_shows_what_each_preset_needs_and_published():
    out = tunebench(presets.REPO, "reproduce", "--list", timeout=300)
    assert out.returncode == 0, out.stderr
    for name in PRESETS:
        assert name in out.stdout
    # The estimator's verdict per method on the published GPU, and the hub inputs.
    assert "on L40S: lora-r32" in out.stdout and "(fits)" in out.stdout
    assert "meta-math/MetaMathQA, openai/gsm8k (main)" in out.stdout
    assert "published on: NVIDIA GeForce RTX 4090" in out.stdout


def test_a_rehearsal_rewrites_the_preset_and_says_what_it_changed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    derived = presets.derive(presets.preset_path("fms-mistral-7b"), "rehearsal")
    settings = yaml.safe_load(derived.read_text())
    assert settings["name"] == "fms-mistral-7b-rehearsal"
    assert settings["reference"]["mode"] == "rehearsal"
    config = json.loads((tmp_path / settings["models"][0]["path"] / "config.json").read_text())
    assert config["model_type"] == "mistral" and config["hidden_size"] == 64
    # Mistral-7B groups its key/value heads; so does its stand-in.
    assert config["num_key_value_heads"] < config["num_attention_heads"]
    hub = settings["datasets"][0]["hub"]
    assert hub["id"].endswith("fixtures/yahma/alpaca-cleaned")
    training = settings["training"]
    assert training["attention"] == "sdpa" and training["max_steps"] == 2
    assert "flash_attention_2 -> sdpa" in settings["description"]
    assert (
        load_experiment(derived).reference.cells
        == load_experiment(presets.preset_path("fms-mistral-7b")).reference.cells
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_passes_its_rehearsal(name, tmp_path):
    out = tunebench(tmp_path, "reproduce", name, "--rehearse", timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    root = tmp_path / "results" / f"{name}-rehearsal"
    rows = pd.read_csv(root / "reproduction.csv")
    cells = load_experiment(presets.preset_path(name)).reference.cells
    assert len(rows) == len(cells)
    # A CPU measures no GPU memory; everything else was reproduced and is never comparable.
    gpu_memory = rows["measure"].isin(reproduction.MEMORY_MEASURES)
    assert (rows.loc[gpu_memory, "verdict"] == "not reproduced: no result").all()
    assert (rows.loc[~gpu_memory, "verdict"] == reproduction.REHEARSAL).all()
    assert rows.loc[~gpu_memory, "reproduced"].notna().all()
    assert "rehearsal: not comparable" in (root / "report.html").read_text()
    table = pd.read_csv(root / "comparison.csv")
    assert (table["status"] == "ok").all(), table[["run_id", "status", "reason"]]
    if name == "peft-metamathqa":
        # GSM8K's "#### n" answers were extracted from every reference of the fixture.
        samples = next(root.glob("runs/*/eval/samples.jsonl")).read_text().splitlines()
        for sample in map(json.loads, samples):
            assert sample["reference_answer"] == re.search(r"#### (\S+)", sample["reference"])[
                1
            ].replace(",", "")


@pytest.mark.slow
def test_resources_mode_trains_the_published_architecture_at_full_length(tmp_path):
    preset = tmp_path / "small.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "name": "small",
                "models": [{"name": "smollm2", "hub": "HuggingFaceTB/SmolLM2-135M"}],
                "methods": [{"method": "lora", "ranks": [4], "learning_rate": 1e-4}],
                "datasets": [{"name": "alpaca", "hub": {"id": "yahma/alpaca-cleaned"}}],
                "training": {"max_steps": 500, "batch_size": 1, "max_length": 48},
                "reference": {
                    "study": "a study",
                    "hardware": "NVIDIA L40S",
                    "cells": [
                        {
                            "run": {"method": "lora"},
                            "measure": "exact_match",
                            "value": 0.5,
                            "source": "T1",
                        },
                        {
                            "run": {"method": "lora"},
                            "measure": "train_seconds",
                            "value": 9.0,
                            "source": "T1",
                        },
                    ],
                },
            }
        )
    )
    out = tunebench(tmp_path, "reproduce", str(preset), "--resources", "--steps", "2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    root = tmp_path / "results" / "small-resources"
    settings = yaml.safe_load((root / "preset.yaml").read_text())
    assert settings["training"]["max_steps"] == 2
    config = json.loads((tmp_path / settings["models"][0]["path"] / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        576,
        30,
        49152,
    )
    # Every training row is a longest row: max_length tokens.
    train = next(root.glob("data/*/tokenized/*/train.parquet"))
    lengths = pd.read_parquet(train)["input_ids"].map(len)
    assert len(lengths) == 2 and (lengths >= 48).all()
    rows = pd.read_csv(root / "reproduction.csv").set_index("measure")
    assert rows.loc["exact_match", "verdict"] == reproduction.QUALITY_NOT_CLAIMED
    assert rows.loc["train_seconds", "reproduced"] > 0
