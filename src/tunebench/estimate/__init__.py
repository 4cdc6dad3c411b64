"""Predict a training run's peak GPU memory, step time and cost before running it.

`estimate(config, setup, gpus)` works from a model's configuration alone (trace.py builds it on
the meta device: no weights, no GPU); setup.py says what it is told, memory.py and speed.py
what it predicts, gpus.py what it predicts for, calibration.py the few fitted constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

from tunebench.estimate import calibration
from tunebench.estimate.gpus import Gpu
from tunebench.estimate.memory import GIB, MemoryEstimate, estimate_memory
from tunebench.estimate.setup import EstimateError, Setup
from tunebench.estimate.speed import SpeedEstimate, estimate_speed
from tunebench.estimate.trace import Footprint, trace

__all__ = ["Estimate", "EstimateError", "Setup", "estimate", "verdict"]

# Share of a GPU's memory that a prediction may use and still be called a fit: the rest is
# the margin for what varies between runs (the longest batch, allocator state).
TIGHT_ABOVE = 0.9


@dataclass
class Estimate:
    setup: Setup
    footprint: Footprint
    memory: MemoryEstimate
    speeds: dict[str, SpeedEstimate] = field(default_factory=dict)  # by GPU name
    verdicts: dict[str, str] = field(default_factory=dict)  # by GPU name


def verdict(reserved_bytes: float, gpu: Gpu, constants=calibration.MEMORY) -> str:
    """fits | tight | does not fit, against what the GPU leaves after the CUDA context."""
    usable = (gpu.memory_gib - constants.context_gib) * GIB
    if reserved_bytes <= TIGHT_ABOVE * usable:
        return "fits"
    if reserved_bytes <= usable:
        return "tight"
    return "does not fit"


@lru_cache(maxsize=256)
def _cached_trace(config_json: str, setup: Setup) -> Footprint:
    import json

    from transformers import AutoConfig

    fields = json.loads(config_json)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    return trace(config, setup, setup.batch_size, setup.seq_len)


def footprint(config, setup: Setup) -> Footprint:
    """trace.trace, cached: a matrix's runs that differ only in seed or learning rate share it."""
    # Only what changes the traced forward pass is part of the key.
    traced = replace(
        setup,
        steps=None,
        optimizer="sgd",
        gradient_accumulation=1,
        gradient_checkpointing=False,
        loss="standard",
        quant_type=None,
        double_quant=False,
    )
    return _cached_trace(config.to_json_string(use_diff=False), traced)


def estimate(
    config,
    setup: Setup,
    gpus: list[Gpu] = (),
    memory_constants=calibration.MEMORY,
    speed_constants=calibration.SPEED,
) -> Estimate:
    fp = footprint(config, setup)
    memory = estimate_memory(setup, fp, memory_constants)
    result = Estimate(setup, fp, memory)
    for gpu in gpus:
        result.speeds[gpu.name] = estimate_speed(setup, fp, config, gpu, speed_constants)
        result.verdicts[gpu.name] = verdict(memory.peak_reserved, gpu, memory_constants)
    return result
