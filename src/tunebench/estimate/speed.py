"""Step time, throughput and model FLOPs utilisation (MFU).

How FLOPs are counted (per token, matrix multiplications only; 2 FLOPs per multiply-add):
- forward: 2 x every Linear weight (the output head included, embedding lookups not), plus
  attention's two products, 4 x layers x sequence x attention width (halved for fused causal
  kernels, which skip the masked half; eager attention computes all of it);
- backward: gradients with respect to the inputs cost what the forward pass cost; gradients
  with respect to the weights cost 2 x the *trainable* Linear weights. Full fine-tuning is then
  the familiar 6 x parameters; an adapter run is about 4 x parameters, because frozen weights
  need no weight gradient;
- gradient checkpointing runs the forward pass again (hardware FLOPs, not model FLOPs).
MFU uses model FLOPs (no recomputation), as PaLM defined it, over the GPU's dense 16-bit peak.

Time is the FLOPs over the peak rate times a fitted efficiency, plus the memory-bound work the
FLOP count misses (the optimizer's pass over its states, QLoRA's dequantisation of every
4-bit weight in each forward and backward pass), plus fitted fixed costs per step and per
layer pass (kernel launches and small ops, which dominate small models on large GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunebench.estimate import calibration
from tunebench.estimate.gpus import Gpu
from tunebench.estimate.setup import ADAM_8BIT, ADAM_32BIT, PAGED_8BIT, PAGED_32BIT, Setup
from tunebench.estimate.trace import Footprint


@dataclass
class SpeedEstimate:
    model_flops_per_token: float
    hardware_flops_per_token: float
    tokens_per_step: int
    step_seconds: float | None
    tokens_per_second: float | None
    train_hours: float | None  # steps x step time (None without steps or without a rate)
    mfu: float | None  # at the predicted speed


def attention_width(config) -> int:
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.num_attention_heads * head_dim


def flops_per_token(setup: Setup, fp: Footprint, config) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) per trained token; see the module docstring."""
    causal = 0.5 if setup.attention != "eager" else 1.0
    attention = 4 * fp.layers * setup.seq_len * attention_width(config) * causal
    forward = 2 * fp.matmul_params + attention
    backward = forward + 2 * fp.trainable_matmul_params + attention
    model = forward + backward
    hardware = model + (forward if setup.gradient_checkpointing else 0)
    return model, hardware


def _optimizer_bytes_moved(setup: Setup, fp: Footprint) -> float:
    """Bytes the optimizer step reads and writes: parameters, gradients, states."""
    per_param = fp.trainable_bytes / max(fp.trainable_params, 1)
    if setup.optimizer in ADAM_32BIT | PAGED_32BIT:
        state = 2 * per_param
    elif setup.optimizer in ADAM_8BIT | PAGED_8BIT:
        state = 2.0
    else:
        state = 0.0
    return fp.trainable_params * (2 * per_param + per_param + 2 * state)


def estimate_speed(
    setup: Setup,
    fp: Footprint,
    config,
    gpu: Gpu | None,
    constants=calibration.SPEED,
) -> SpeedEstimate:
    model, hardware = flops_per_token(setup, fp, config)
    tokens = setup.batch_size * setup.seq_len * setup.gradient_accumulation
    if gpu is None or not gpu.bandwidth_tbs:
        return SpeedEstimate(model, hardware, tokens, None, None, None, None)
    peak = gpu.peak_tflops(setup.compute_dtype) * 1e12
    compute = tokens * hardware / (peak * constants.matmul_efficiency)
    bandwidth = gpu.bandwidth_tbs * 1e12
    memory_bound = _optimizer_bytes_moved(setup, fp) / bandwidth
    if setup.method == "qlora":
        passes = setup.gradient_accumulation * (3 if setup.gradient_checkpointing else 2)
        # Read 4-bit weights, write and read the 16-bit copy the matmul uses.
        memory_bound += passes * fp.quantized_params * (0.5 + 2 + 2) / bandwidth
    passes = setup.gradient_accumulation * (3 if setup.gradient_checkpointing else 2)
    launches = passes / 2 * fp.layers * constants.layer_overhead_s
    step = compute + memory_bound + launches + constants.step_overhead_s
    rate = tokens / step
    hours = setup.steps * step / 3600 if setup.steps else None
    return SpeedEstimate(model, hardware, tokens, step, rate, hours, model * rate / peak)


def mfu(model_flops_per_token: float, tokens_per_second: float, gpu: Gpu, dtype: str) -> float:
    """Model FLOPs utilisation of a measured run."""
    return model_flops_per_token * tokens_per_second / (gpu.peak_tflops(dtype) * 1e12)
