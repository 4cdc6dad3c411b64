"""Peak GPU memory of one training step, as a sum of named terms.

The terms follow the order of a step: what lives the whole run (weights, their quantisation
constants, trainable parameters, optimizer states), then the larger of the forward/backward
peak (saved activations, logits and loss, gradients as they appear) and the optimizer step
(gradients and the optimizer's temporary buffers). Parameter, gradient and state terms are
exact counts from the meta-device model (trace.Footprint); activations are what autograd saves
in a traced forward pass. Only the allocator's overhead (reserved over allocated) and a fixed
workspace are fitted to published measurements (calibration.py), with a share of allocations
that no term accounts for (backward temporaries, allocator rounding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tunebench.estimate import calibration
from tunebench.estimate.setup import (
    ADAM_8BIT,
    ADAM_32BIT,
    FUSED,
    PAGED_8BIT,
    PAGED_32BIT,
    Setup,
)
from tunebench.estimate.trace import Footprint
from tunebench.measure import GIB

# bitsandbytes 4-bit: 64 weights per block, one float32 absmax each; double quantisation stores
# the absmax in 8 bits with one float32 constant per 256 blocks (QLoRA paper, section 3).
BLOCK = 64
# bitsandbytes' paged optimizers put states of tensors of at least 1e5 elements in CUDA unified
# memory (Optimizer8bit.get_state_buffer), which torch's memory counters do not see.
PAGED_MIN_NUMEL = 100_000


@dataclass
class MemoryEstimate:
    """Bytes of each term at the predicted peak, and the peak (allocated and reserved)."""

    weights: float
    quantization_constants: float
    trainable_parameters: float
    gradients: float
    optimizer_states: float
    activations: float
    logits_and_loss: float
    step_buffers: float  # optimizer temporaries, dequantised weights, DoRA's weight norm
    runtime_overhead: float  # temporaries not counted, allocator overhead, workspaces
    peak_allocated: float
    peak_reserved: float
    unified_memory: float  # paged optimizer states: on the GPU, outside torch's counters
    peak_phase: str  # "forward/backward" or "optimizer step"

    def gib(self) -> dict:
        return {k: (v / GIB if isinstance(v, float | int) else v) for k, v in asdict(self).items()}


def quantization_bytes(setup: Setup, quantized_params: int) -> tuple[float, float]:
    """(4-bit storage, quantisation constants) of the quantised weights."""
    if setup.method != "qlora":
        return 0.0, 0.0
    blocks = quantized_params / BLOCK
    constants = blocks * 1 + blocks / 256 * 4 if setup.double_quant else blocks * 4
    return quantized_params / 2, constants


def optimizer_bytes(setup: Setup, fp: Footprint) -> tuple[float, float, float]:
    """(states on the device, states in unified memory, temporaries of the step)."""
    per_param = fp.trainable_bytes / max(fp.trainable_params, 1)
    if setup.optimizer in ADAM_32BIT:
        states = 2 * fp.trainable_bytes
        # torch's foreach AdamW (the default) allocates one state-sized buffer (the square root
        # of the second moment) for all parameters at once; the fused kernel does not. On a
        # CPU torch steps one tensor at a time (foreach is for GPU tensors: torch.optim's
        # _default_to_fused_or_foreach): the square root and its quotient of the largest one.
        temporary = 0.0 if setup.optimizer in FUSED else fp.trainable_bytes
        if setup.device != "cuda" and temporary:
            temporary = 2.0 * fp.largest_trainable_bytes
        return states, 0.0, temporary
    if setup.optimizer in ADAM_8BIT:
        return 2.0 * fp.trainable_params, 0.0, 0.0
    if setup.optimizer in PAGED_8BIT | PAGED_32BIT:
        size = 2.0 if setup.optimizer in PAGED_8BIT else 2 * per_param
        paged = fp.trainable_large_params * size
        return fp.trainable_params * size - paged, paged, 0.0
    return 0.0, 0.0, 0.0  # sgd (no momentum, as transformers' "sgd"), stateless


def activation_bytes(setup: Setup, fp: Footprint) -> float:
    if not setup.gradient_checkpointing:
        return float(fp.saved_bytes)
    # Each layer keeps its input; the layer being recomputed holds its activations again.
    recompute = max(fp.saved_per_layer, default=0)
    kept = fp.layers * fp.layer_input_bytes
    if setup.backend == "unsloth":
        # A documented factor, not validated: Unsloth's checkpointing offloads each layer's
        # kept input to host memory (use_gradient_checkpointing="unsloth").
        kept = 0
    return float(fp.saved_outside_layers + kept + recompute)


# Bytes per logit (batch x sequence x vocabulary) at the start of the backward pass, by
# setup.loss. standard: transformers upcasts the logits to float32 and log-softmax saves its
# float32 output; neither the logits nor the upcast copy are kept for the backward pass, which
# then holds that output, the gradient with respect to it and the gradient of the logits (12;
# the H200 check in docs/estimator.md agreed to within a few percent). chunked: 16-bit logits
# and log-softmax output, two 16-bit gradients. fused: Liger never makes the full logits.
# tiled: TRL's fused LM head neither (its tiles: tiled_head_bytes).
LOGIT_BYTES = {"standard": 12.0, "chunked": 6.0, "fused": 0.0, "tiled": 0.0}
# TRL 1.16's fused LM head (trl/kernels/chunked_logprob.py, ChunkedLogProbFunction): a tile
# buffer of TOKEN_CHUNK_SIZE tokens x the chunk width (trl/trainer/utils.py,
# _CHUNKED_LOGPROB_CHUNK_SIZE) in the compute dtype, as wide as the chunk even when the
# vocabulary is smaller; without Triton (a CPU) _backward_tile also holds float32 copies of one
# tile: z, log p, p, the gradient, the target mask as float, its difference with p and the
# product (7), and the mask itself (0.25); a 16-bit tile adds its float32 upcast.
TILE_TOKENS = 4096
TILE_COLUMNS = 32768
TORCH_TILE_COPIES = 7.25


def logits_bytes(setup: Setup, fp: Footprint) -> float:
    """Logits and the cross-entropy around them (LOGIT_BYTES). Unsloth computes its loss in
    chunks (a documented factor, like its checkpointing above)."""
    loss = "chunked" if setup.backend == "unsloth" and setup.loss == "standard" else setup.loss
    full = LOGIT_BYTES[loss] * setup.batch_size * setup.seq_len * fp.vocab_size
    return full + (tiled_head_bytes(setup, fp) if loss == "tiled" else 0.0)


def tiled_head_bytes(setup: Setup, fp: Footprint) -> float:
    """TRL's fused LM head at its peak (its backward, when every activation is still held): the
    tile buffer, and on a CPU the torch fallback's float32 copies of a tile."""
    tokens = min(setup.batch_size * setup.seq_len, TILE_TOKENS)
    width = setup.compute_bytes
    held = tokens * TILE_COLUMNS * width
    if setup.device != "cuda":
        copies = TORCH_TILE_COPIES + (1 if width < 4 else 0)
        held += copies * tokens * min(fp.vocab_size, TILE_COLUMNS) * 4
    return held


def backward_peak(setup: Setup, fp: Footprint, activations: float, logits: float) -> float:
    """The most the backward pass holds beyond resident memory. It starts with every saved
    activation and the loss's buffers; layer by layer (last first) it frees a layer's
    activations and adds that layer's gradients. Without checkpointing the peak is at one end
    (activations dominate: the start; gradients dominate: the end); with it, each layer's
    activations are recomputed one layer at a time over its kept input."""
    head = fp.head_trainable_bytes
    grads = fp.trainable_per_layer or [0]
    if setup.gradient_checkpointing:
        per_layer = [fp.layer_input_bytes] * fp.layers
        working = max(fp.saved_per_layer, default=0)
    else:
        per_layer = fp.saved_per_layer or [0]
        working = 0.0
    outside = activations - sum(per_layer) - working
    peak = activations + logits + head
    for k in range(len(per_layer)):  # processing layer k, layers above it already done
        live = outside + sum(per_layer[: k + 1]) + working + sum(grads[k:]) + head
        peak = max(peak, live)
    return peak


def buffer_bytes(setup: Setup, fp: Footprint) -> float:
    """Short-lived per-layer buffers of the forward/backward pass."""
    if setup.method == "dora":
        # DoRA's weight norm: the merged weight (base + B @ A) of one layer, in float32, twice.
        return fp.largest_linear * 8.0
    if setup.method == "qlora":
        return fp.largest_linear * 2.0  # one layer's weight dequantised for its matmul
    return 0.0


def estimate_memory(setup: Setup, fp: Footprint, constants=calibration.MEMORY) -> MemoryEstimate:
    stored, quant_consts = quantization_bytes(setup, fp.quantized_params)
    weights = fp.frozen_bytes + stored
    if setup.reference_copy:  # full-fine-tuning DPO's frozen reference model
        weights += fp.trainable_bytes
    trainable = float(fp.trainable_bytes)
    gradients = float(fp.trainable_bytes)
    states, unified, step_temporary = optimizer_bytes(setup, fp)
    activations = activation_bytes(setup, fp)
    logits = logits_bytes(setup, fp)
    buffers = buffer_bytes(setup, fp)
    resident = weights + quant_consts + trainable + states
    forward_backward = backward_peak(setup, fp, activations, logits) + buffers
    # With accumulation, gradients persist across micro-batches: every backward pass but the
    # first runs on top of all of them.
    if setup.gradient_accumulation > 1:
        forward_backward = max(forward_backward, activations + logits + buffers + gradients)
    optimizer_step = gradients + step_temporary
    phase = "forward/backward" if forward_backward >= optimizer_step else "optimizer step"
    counted = resident + max(forward_backward, optimizer_step)
    # The unattributed share was fitted on GPU runs (cuBLAS workspaces, the allocator's block
    # rounding); a CPU's profiler counts tensors exactly (benchmarks/estimator_cpu.py).
    unattributed = constants.unattributed if setup.device == "cuda" else 0.0
    allocated = counted * (1 + unattributed)
    reserved = allocated * (1 + constants.allocator_overhead) + constants.workspace_gib * GIB
    return MemoryEstimate(
        weights=float(weights),
        quantization_constants=quant_consts,
        trainable_parameters=trainable,
        gradients=gradients,
        optimizer_states=states,
        activations=activations,
        logits_and_loss=logits,
        step_buffers=buffers + step_temporary,
        runtime_overhead=reserved - counted,
        peak_allocated=allocated,
        peak_reserved=reserved,
        unified_memory=unified,
        peak_phase=phase,
    )
