"""Count what a training step must hold, from the model's configuration alone.

The model is built on PyTorch's meta device (shapes and dtypes, no memory, no weights), the
fine-tuning method is applied to it with PEFT exactly as training does, and one forward pass runs
on meta tensors under autograd's saved-tensor hooks. What autograd saves for the backward pass is
the activation memory, counted once per storage, for whatever transformers' modelling code does
(RMSNorm's float32 upcasts, rotary embeddings, SwiGLU, grouped-query attention, ...), instead
of a hand-written formula per architecture.

Two things the meta device cannot do are emulated, each in one place:
- mixed precision: autocast has no meta kernel, so every Linear casts its input to the compute
  dtype the way autocast does (`_autocast_linear`); PEFT's own cast of the input to the
  adapter's float32 is real, so the extra copy each adapter saves is counted as on a GPU;
- 4-bit weights: bitsandbytes cannot quantise meta tensors, so quantised layers are Linear
  layers in the compute dtype that cast their input and output as `Linear4bit` does; their
  storage (half a byte per weight plus quantisation constants) is counted by `memory`.
Attention (sdpa, flash) is a stand-in that saves what the fused kernels save (query, key, value,
output and the log-sum-exp); eager attention runs transformers' own code.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass, field

import torch

from tunebench.estimate.setup import EstimateError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ATTENTION_STAND_IN = "tunebench_meta_attention"


@dataclass
class Footprint:
    """Parameter inventory and saved activations of one model + method, in bytes and counts."""

    total_params: int = 0
    trainable_params: int = 0
    # Weights that bitsandbytes would store in 4 bits (QLoRA), and the rest by dtype size.
    quantized_params: int = 0
    frozen_bytes: int = 0  # frozen, not quantised, at their dtype
    trainable_bytes: int = 0  # trainable parameters at their dtype
    trainable_large_params: int = 0  # in tensors of >= 1e5 elements (paged optimizers)
    largest_trainable_bytes: int = 0  # the largest trainable tensor (a CPU's AdamW temporaries)
    head_trainable_bytes: int = 0  # the output head's weight, if trained (full fine-tuning)
    trainable_per_layer: list[int] = field(default_factory=list)  # bytes, by decoder layer
    largest_linear: int = 0  # out x in of the largest adapted Linear (DoRA's weight-norm buffer)
    matmul_params: int = 0  # weights of Linear layers (what the FLOP count uses)
    trainable_matmul_params: int = 0
    layers: int = 0
    saved_bytes: int = 0  # saved activations of the whole forward pass
    saved_outside_layers: int = 0  # embedding, final norm, lm_head input
    saved_per_layer: list[int] = field(default_factory=list)
    layer_input_bytes: int = 0  # what gradient checkpointing keeps per layer
    vocab_size: int = 0
    logits_bytes_per_value: int = 2  # the lm_head's output dtype


def build_config(config, layers: int | None = None):
    """A copy of `config` (a transformers PretrainedConfig) with `layers` decoder layers."""
    config = config.__class__.from_dict(config.to_dict())
    if layers is not None:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:layers]
    return config


def _register_attention() -> None:
    from transformers import AttentionInterface

    class FusedAttention(torch.autograd.Function):
        """Saves what flash / memory-efficient attention saves: q, k, v, output, log-sum-exp."""

        @staticmethod
        def forward(ctx, query, key, value):
            out = torch.empty_like(query)
            lse = query.new_empty(query.shape[:3], dtype=torch.float32)
            ctx.save_for_backward(query, key, value, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):  # never run: the trace has no backward pass
            raise NotImplementedError

    def attention(module, query, key, value, attention_mask, repeat_kv=False, **kwargs):
        if repeat_kv and key.shape[1] != query.shape[1]:
            # HF's sdpa path repeats key/value heads when a padding mask is given
            # (use_gqa_in_sdpa): real copies, saved by the kernel.
            groups = query.shape[1] // key.shape[1]
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        out = FusedAttention.apply(query, key, value)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(ATTENTION_STAND_IN, attention)


class _Dropout(torch.autograd.Function):
    """Dropout as CUDA runs it: the mask is saved as bool (on meta it would be the input's
    dtype, four times too big for float32)."""

    @staticmethod
    def forward(ctx, x, p):
        ctx.save_for_backward(torch.empty(x.shape, dtype=torch.bool, device=x.device))
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, grad):  # never run: the trace has no backward pass
        raise NotImplementedError


def _autocast_linear(module: torch.nn.Linear, dtype: torch.dtype, cast_back: bool) -> None:
    """Make `module` compute as under autocast (cast_back=False) or as bitsandbytes' Linear4bit
    with a compute dtype (cast_back=True: the output returns to the input's dtype)."""
    import torch.nn.functional as F

    def forward(x):
        y = F.linear(
            x.to(dtype),
            module.weight.to(dtype),
            None if module.bias is None else module.bias.to(dtype),
        )
        return y.to(x.dtype) if cast_back else y

    module.forward = forward


def meta_model(config, setup):
    """The model of `config` on the meta device with `setup`'s method applied, dtypes as in
    training (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    _register_attention()
    compute = DTYPES[setup.compute_dtype]
    attention = "eager" if setup.attention == "eager" else ATTENTION_STAND_IN
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=compute, attn_implementation=attention
        )
    quantized: set[str] = set()
    if setup.method == "qlora":
        # bitsandbytes quantises every Linear but the output head; PEFT's
        # prepare_model_for_kbit_training then casts every other 16-bit parameter to float32.
        head = model.get_output_embeddings()
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                quantized.add(name)
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[0] not in quantized and setup.kbit_prepared:
                param.data = param.data.to(torch.float32)
    if setup.method == "full":
        model.requires_grad_(True)
        return model, quantized
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    peft_config = LoraConfig(
        r=setup.rank,
        lora_alpha=setup.rank * 2,
        lora_dropout=setup.dropout,
        target_modules=setup.target_modules,
        use_dora=setup.method == "dora",
        use_rslora=setup.method == "rslora",
        task_type="CAUSAL_LM",
    )
    # PEFT keeps adapters in float32 over a 16-bit base (autocast_adapter_dtype), as in training.
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as err:  # no such layer in this architecture
        raise EstimateError(
            f"methods[].target_modules {setup.target_modules!r}: {str(err).splitlines()[0]}"
        ) from err
    if not setup.float32_adapters:
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(compute)
    return model, {f"base_model.model.{name}" for name in quantized}


def _inventory(model, quantized: set[str], out: Footprint) -> None:
    layers = _decoder_layers(model)
    layer_of = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
    out.trainable_per_layer = [0] * len(layers)
    adapted_linears = []
    for module in model.modules():
        if hasattr(module, "base_layer") and isinstance(module.base_layer, torch.nn.Linear):
            adapted_linears.append(module.base_layer.weight.numel())
    out.largest_linear = max(adapted_linears, default=0)
    head = model.get_output_embeddings()
    if head is not None and head.weight.requires_grad:
        out.head_trainable_bytes = head.weight.numel() * head.weight.element_size()
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    for name, param in model.named_parameters():
        n = param.numel()
        out.total_params += n
        owner = name.rsplit(".", 1)[0].removesuffix(".base_layer")
        is_quantized = owner in quantized and name.endswith(".weight")
        if id(param) in linear_weights:
            out.matmul_params += n
            if param.requires_grad:
                out.trainable_matmul_params += n
        if param.requires_grad:
            out.trainable_params += n
            out.trainable_bytes += n * param.element_size()
            out.trainable_large_params += n if n >= 100_000 else 0
            out.largest_trainable_bytes = max(out.largest_trainable_bytes, n * param.element_size())
            if id(param) in layer_of:
                out.trainable_per_layer[layer_of[id(param)]] += n * param.element_size()
        elif is_quantized:
            out.quantized_params += n
        else:
            out.frozen_bytes += n * param.element_size()


def _decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks: the longest ModuleList in the model."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists, key=len) if lists else []


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def trace(config, setup, batch_size: int, seq_len: int) -> Footprint:
    """Build the model on meta, count its parameters, run one forward pass of
    batch_size x seq_len tokens and count what autograd saves (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' own deprecations
        model, quantized = meta_model(config, setup)
    out = Footprint(vocab_size=config.get_text_config().vocab_size)
    _inventory(model, quantized, out)
    compute = DTYPES[setup.compute_dtype]
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.forward = lambda x, p=module.p: _Dropout.apply(x, p)
        if not isinstance(module, torch.nn.Linear):
            continue
        if name in quantized or name.removesuffix(".base_layer") in quantized:
            _autocast_linear(module, compute, cast_back=True)
        elif setup.autocast:
            _autocast_linear(module, compute, cast_back=False)

    params = {_storage_key(p) for p in model.parameters()}
    # storage -> (the tensor, bytes, layer index or -1). Only what is still alive at the end
    # of the forward pass counts: a graph that is dropped (DoRA's weight norm is computed
    # through the adapters and detached) frees what it saved, and its storages' keys can be
    # reused by later tensors.
    saved: dict[int, tuple] = {}
    current = [-1]

    def pack(tensor):
        key = _storage_key(tensor)
        if key not in params and (key not in saved or saved[key][0]() is None):
            saved[key] = (weakref.ref(tensor), tensor.untyped_storage().nbytes(), current[0])
        return tensor

    layers = _decoder_layers(model)
    out.layers = len(layers)
    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i)))
        handles.append(layer.register_forward_hook(lambda m, a, r: current.__setitem__(0, -1)))
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device="meta")
    residual_dtype = torch.float32 if setup.kbit_prepared else compute
    kwargs = {}
    if setup.attention == "eager":
        # A ready 4-D mask: building one from a padding mask reads values, which meta
        # tensors do not have. Eager attention adds it to its scores either way.
        kwargs["attention_mask"] = torch.zeros(
            batch_size, 1, seq_len, seq_len, dtype=residual_dtype, device="meta"
        )
    elif setup.attention == "sdpa" and not setup.padding_free:
        kwargs["repeat_kv"] = True  # a padded batch carries a mask (see _register_attention)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", FutureWarning)  # transformers' own deprecations
        if setup.method != "full":
            # Trainer (gradient checkpointing) and PEFT make the embeddings' output require
            # grad so that the adapters' inputs do: the same graph as in training.
            model.enable_input_require_grads()
        logits = model(input_ids=ids, use_cache=False, **kwargs).logits
    for h in handles:
        h.remove()
    out.logits_bytes_per_value = logits.element_size()
    per_layer = [0] * len(layers)
    for alive, nbytes, where in saved.values():
        if alive() is None:
            continue
        out.saved_bytes += nbytes
        if where < 0:
            out.saved_outside_layers += nbytes
        else:
            per_layer[where] += nbytes
    out.saved_per_layer = per_layer
    # Gradient checkpointing keeps each layer's input: the residual stream's hidden states.
    hidden = config.get_text_config().hidden_size
    out.layer_input_bytes = batch_size * seq_len * hidden * residual_dtype.itemsize
    return out
