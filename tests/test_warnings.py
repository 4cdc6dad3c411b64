"""What `tunebench run` warns about before anything runs: 16-bit compute asked of a CPU without
native bf16, named key by key (torch emulates it there: one SmolLM2-135M LoRA step took 235 s
instead of 8.7 s); built-in tiny models given the user's own data."""

from __future__ import annotations

import pytest
from conftest import tiny_experiment

from tunebench import precision
from tunebench.experiment import validate_data

QLORA = {
    "method": "qlora",
    "ranks": [4],
    "quantization": {"compute_dtype": ["float32", "bfloat16"]},
}


@pytest.fixture
def avx2_only(monkeypatch):
    monkeypatch.setattr(precision, "cpu_isa", lambda: "AVX2")


def test_each_half_precision_key_is_named(avx2_only):
    exp = validate_data(tiny_experiment(methods=[{"method": "full"}, QLORA]))
    exp = exp.model_copy(
        update={"training": exp.training.model_copy(update={"precision": "bfloat16"})}
    )
    warnings = precision.cpu_precision_warnings(exp, on_gpu=False)
    assert [w.split(" on a CPU")[0] for w in warnings] == [
        "training.precision: bfloat16",
        "methods[1].quantization.compute_dtype: bfloat16",
    ]
    assert all("(AVX2)" in w and "float32" in w for w in warnings)


def test_qlora_default_compute_dtype_is_bf16_and_is_named(avx2_only):
    qlora = {"method": "qlora", "ranks": [4], "quantization": {}}
    (warning,) = precision.cpu_precision_warnings(
        validate_data(tiny_experiment(methods=[qlora])), on_gpu=False
    )
    assert warning.startswith("methods[0].quantization.compute_dtype: bfloat16 on a CPU")


def test_no_warning_for_float32_a_gpu_or_a_bf16_cpu(monkeypatch, avx2_only):
    float32 = validate_data(tiny_experiment())  # precision auto: fp32 on a CPU
    assert precision.cpu_precision_warnings(float32, on_gpu=False) == []
    half = validate_data(tiny_experiment(methods=[QLORA]))
    assert precision.cpu_precision_warnings(half, on_gpu=True) == []
    monkeypatch.setattr(precision, "cpu_isa", lambda: "AVX512-BF16")
    assert precision.cpu_precision_warnings(half, on_gpu=False) == []


def test_builtin_models_on_your_own_data_are_pointed_to_a_real_model():
    from tunebench.experiment import builtin_model_advice

    own = {"name": "mine", "path": "data/mine.jsonl"}
    (advice,) = builtin_model_advice(validate_data(tiny_experiment(datasets=[own])))
    assert "models m are built-in tiny models" in advice and "datasets mine" in advice
    assert builtin_model_advice(validate_data(tiny_experiment())) == []  # the built-in task
