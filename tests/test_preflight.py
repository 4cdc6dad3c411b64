"""`tunebench preflight`: every distinct training shape a few steps on its longest batches, with
the estimate beside the measurement, through the ordinary workflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import tiny_experiment
from helpers import tunebench


def write(tmp_path, settings) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def test_the_preflight_experiment_keeps_the_shapes_and_only_the_shapes(tmp_path, monkeypatch):
    from tunebench import preflight
    from tunebench.experiment import load_experiment
    from tunebench.matrix import expand

    monkeypatch.chdir(tmp_path)
    settings = tiny_experiment()
    settings["methods"][1]["learning_rate"] = [5e-3, 1e-3]  # LR is not a shape
    settings["training"]["seeds"] = [3, 4]  # nor is a seed
    original = load_experiment(write(tmp_path, settings))
    derived_path, changes = preflight.derive(tmp_path / "exp.yaml", steps=2)
    derived = load_experiment(derived_path)
    assert derived.name == "tiny-preflight" and derived.training.max_steps == 2
    assert derived.training.seeds == [3]
    assert len(expand(derived)) == 2 < len(expand(original)) == 6
    assert derived.models[0].builtin.pretrain_steps == 1
    data = derived.datasets[0]
    assert data.format == "preference" and data.too_long == "truncate"
    rows = [json.loads(line) for line in Path(data.files.train).read_text().splitlines()]
    words = derived.training.max_length * preflight.WORDS_PER_TOKEN
    assert all(len(r["chosen"].split()) >= words and len(r["prompt"].split()) < 5 for r in rows)
    assert len(rows) >= derived.training.batch_size
    assert any("seed 3 only" in c for c in changes)


def test_bad_steps_and_a_missing_file_are_invalid_input(tmp_path):
    done = tunebench(tmp_path, "preflight", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "no such experiment file" in done.stderr
    path = write(tmp_path, tiny_experiment())
    done = tunebench(tmp_path, "preflight", path, "--steps", "0")
    assert done.returncode == 2 and "--steps must be at least 1" in done.stderr


@pytest.mark.slow
def test_every_shape_trains_beside_its_estimate_and_a_failing_one_is_named(tmp_path):
    settings = tiny_experiment()
    settings["datasets"][0]["format"] = "preference"
    settings["methods"].append(
        {"method": "lora", "label": "dpo", "objective": "dpo", "start_from": "lora", "ranks": [4],
         "learning_rate": 1e-4}
    )  # fmt: skip
    # A shape that cannot train: named, and the exit status says so.
    settings["methods"].append(
        {"method": "lora", "label": "nowhere", "ranks": [2], "learning_rate": 1e-3,
         "target_modules": ["no_such_proj"]}
    )  # fmt: skip
    done = tunebench(tmp_path, "preflight", write(tmp_path, settings), "--steps", "2")
    report = json.loads((tmp_path / "results/tiny/preflight/preflight.json").read_text())
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    ok = [r for r in report["shapes"] if r["status"] == "ok"]
    assert len(ok) == 3  # full, LoRA, and DPO from the LoRA run
    for row in ok:
        assert row["peak_memory_gb"] > 0 and row["predicted_peak_gb"] > 0
        assert row["measured_step_seconds"] > 0 and row["tokens_per_second"] > 0
    failed = [r for r in report["shapes"] if r["status"] != "ok"]
    assert len(failed) == 1 and "nowhere" in failed[0]["run_id"] and failed[0]["reason"]
    assert "some shapes failed" in done.stdout
    assert os.path.isfile(tmp_path / "results/tiny/preflight/preflight.md")
