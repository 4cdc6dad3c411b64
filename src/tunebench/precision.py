"""Which precisions this CPU computes natively, and a warning for an experiment that asks a CPU
without native bf16 for bf16 (or fp16) compute.

On an AVX2-only CPU, torch emulates bf16: one LoRA step of SmolLM2-135M took 235 s with bf16
autocast against 8.7 s in fp32 (measured by this project on an AVX2-only AMD EPYC, 2 cores).
The result is the same, so it is a warning naming the key rather than an error: a GPU node may
run the jobs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunebench.spec import Experiment

HALF = ("bfloat16", "float16")


def cpu_isa() -> str:
    """The widest vector instructions the CPU offers torch: results differ between machines
    with AVX512-BF16 and AVX2 only (kernels round differently), so results record it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    for flag, name in (("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2")):
        if flag in flags:
            return name
    return "other"


def has_native_bf16() -> bool:
    return cpu_isa() == "AVX512-BF16"


def half_precision_keys(exp: Experiment) -> list[str]:
    """The keys of an experiment that ask for 16-bit compute, each with its value."""
    keys = []
    if exp.training.precision in HALF:
        keys.append(f"training.precision: {exp.training.precision}")
    for i, method in enumerate(exp.methods):
        quantization = getattr(method, "quantization", None)
        if quantization is not None:
            half = [d for d in quantization.compute_dtype if d in HALF]
            if half:
                keys.append(f"methods[{i}].quantization.compute_dtype: {', '.join(half)}")
    return keys


def cpu_precision_warnings(exp: Experiment, on_gpu: bool | None = None) -> list[str]:
    """Warnings for 16-bit compute asked of this machine's CPU (none on a GPU machine, none on
    a CPU with native bf16). `on_gpu` defaults to whether an NVIDIA driver is installed, which
    is known without importing torch."""
    if on_gpu is None:
        on_gpu = shutil.which("nvidia-smi") is not None
    if on_gpu or has_native_bf16():
        return []
    return [
        f"{key} on a CPU without native bf16 ({cpu_isa()}): torch emulates it, tens of times "
        "slower than float32 (one SmolLM2-135M LoRA step: 235 s vs 8.7 s). Use float32 on "
        "this machine, or run on a GPU."
        for key in half_precision_keys(exp)
    ]
