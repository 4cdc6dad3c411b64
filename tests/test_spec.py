"""Experiment validation: good files pass, bad ones fail with the offending key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_experiment

from tunebench.cli import main
from tunebench.experiment import ExperimentError, load_experiment, validate_data


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_of(data) -> str:
    with pytest.raises(ExperimentError) as info:
        validate_data(data)
    return str(info.value)


def test_default_experiment_is_valid():
    exp = load_experiment(REPO / "experiments" / "smoke.yaml")
    assert exp.name == "smoke"


def test_negative_rank_names_its_key_path():
    exp = tiny_experiment()
    exp["methods"][1]["ranks"] = [4, -1]
    assert "methods[1].ranks[1]: Input should be greater than 0" in error_of(exp)


def test_unknown_key_is_an_error_with_its_path():
    exp = tiny_experiment()
    exp["training"]["learnin_rate"] = 1e-3
    assert "training.learnin_rate: Extra inputs are not permitted" in error_of(exp)


def test_unknown_method_is_rejected():
    exp = tiny_experiment()
    exp["methods"][0] = {"method": "prefix-tuning"}
    assert "methods[0]" in error_of(exp)


def test_qlora_needs_quantization_settings():
    exp = tiny_experiment()
    exp["methods"].append({"method": "qlora", "ranks": [8]})
    assert "methods[2].quantization: Field required" in error_of(exp)


def test_model_needs_exactly_one_source():
    exp = tiny_experiment()
    exp["models"][0]["path"] = "/some/folder"
    assert "models[0]: Value error, give exactly one of hub, path, gguf, builtin" in error_of(exp)


def test_steps_or_epochs():
    exp = tiny_experiment()
    exp["training"]["epochs"] = 1
    assert "training: Value error, give exactly one of max_steps, epochs" in error_of(exp)


def test_duplicate_model_names():
    exp = tiny_experiment()
    exp["models"].append(dict(exp["models"][0]))
    assert "duplicate name(s) ['m']" in error_of(exp)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "name: x\nmodels: [\n  - oops\n")
    with pytest.raises(ExperimentError, match=r"exp.yaml:\d+:\d+: YAML syntax error"):
        load_experiment(path)


def test_cli_validate_exit_codes(tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, tiny_experiment()))]) == 0
    assert "valid, 2 runs + 1 baselines" in capsys.readouterr().out
    bad = tiny_experiment()
    bad["methods"][1]["ranks"] = [0]
    assert main(["validate", str(write(tmp_path, bad))]) == 2
    assert "methods[1].ranks[0]" in capsys.readouterr().err


def test_every_shipped_experiment_is_valid():
    files = sorted((REPO / "experiments").rglob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        load_experiment(path)
