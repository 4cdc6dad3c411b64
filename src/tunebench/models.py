"""Load a base model + tokenizer (hub id, local folder, or the folder the workflow made for a
built-in or GGUF model) and apply a fine-tuning method: full, lora, dora, rslora, qlora
(bitsandbytes 4-bit)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from tunebench.outcomes import ModelNotFound
from tunebench.spec import ModelSpec
from tunebench.training import distributed

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def model_location(spec: ModelSpec, made_dir: Path | None) -> str:
    """What to pass to from_pretrained: a hub id or a local folder. `made_dir` is the folder the
    workflow wrote for a built-in model (pre-trained) or a GGUF (imported)."""
    if spec.hub:
        return spec.hub
    folder = Path(spec.path) if spec.path else made_dir
    if folder is None or not (folder / "config.json").is_file():
        raise ModelNotFound(
            f"model {spec.name!r}: no config.json in {folder} (models[].path must be a folder "
            "written by save_pretrained; for a hub model use models[].hub, for a .gguf file "
            "models[].gguf)"
        )
    return str(folder)


def hub_kwargs(spec: ModelSpec) -> dict:
    kwargs = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision:
        kwargs["revision"] = spec.revision
    token = os.environ.get("HF_TOKEN")
    if spec.hub and token:
        kwargs["token"] = token
    return kwargs


def load_tokenizer(spec: ModelSpec, location: str):
    """The first hub access of a run, so a missing or unreachable model fails here, clearly."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **hub_kwargs(spec))
    except OSError as err:
        hint = (
            " HF_HUB_OFFLINE=1 is set: download the model into the HF cache first"
            " (huggingface-cli download), or unset it."
            if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
            else " Check the id, the revision and HF_TOKEN."
        )
        raise ModelNotFound(
            f"model {spec.name!r}: cannot load {location!r} ({str(err).splitlines()[0]}).{hint}"
        ) from err
    if tokenizer.pad_token is None:
        # Llama-style tokenizers ship without a pad token; EOS is the usual stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def training_dtype(precision: str) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on a CPU."""
    if precision != "auto":
        return DTYPES[precision]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def disable_cpu_bf16_repacking(model) -> int:
    """Work around a silent bitsandbytes (0.50) CPU bug. On a CPU with AVX512-BF16,
    `Linear4bit.forward` in eval mode (evaluation, generation, an eval pass during training)
    repacks the weight into an inference layout (`_convert_weight_packed_for_cpu` in
    bitsandbytes/nn/modules.py) and later training forwards go through `gemv_4bit`, which has
    no autograd kernel: input gradients become None (torch warns "an autograd kernel was not
    registered"), training goes on with wrong results and merging degrades. Turning the flag
    off keeps the training layout. tests/test_training.py proves the bug on such CPUs and that
    QLoRA still learns after an evaluation pass. Returns the number of layers patched."""
    import bitsandbytes as bnb

    patched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            patched += 1
    return patched


def quantization_config(
    quant_type: str, double_quant: bool, compute_dtype: str, sharded: bool = False
):
    """`sharded`: FSDP will shard the 4-bit weights, which it can only do when they are stored
    in the same (floating-point) dtype as the rest of the model (PEFT's FSDP+QLoRA guide)."""
    storage = {"bnb_4bit_quant_storage": DTYPES[compute_dtype]} if sharded else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=DTYPES[compute_dtype],
        **storage,
    )


def load_base_model(
    spec: ModelSpec, location: str, dtype: torch.dtype, quant=None, attention: str = "sdpa"
):
    """Load the untuned model; with `quant` (a BitsAndBytesConfig) in 4-bit for QLoRA.
    `attention`: the attention implementation (training.attention)."""
    kwargs = hub_kwargs(spec) | {"dtype": dtype, "attn_implementation": attention}
    # One GPU per training process: this process's. A process alone with several GPUs (an
    # evaluation job with resources.evaluate.gpus > 1, for a model no one GPU holds) spreads
    # the layers over all of them (accelerate's big-model placement).
    gpu = distributed.local_rank()
    alone_with_gpus = distributed.world_size() == 1 and torch.cuda.device_count() > 1
    place = "auto" if alone_with_gpus else {"": gpu}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = place if torch.cuda.is_available() else {"": "cpu"}
    elif torch.cuda.is_available():
        kwargs["device_map"] = place
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    if quant is not None and not torch.cuda.is_available():
        disable_cpu_bf16_repacking(model)
    return model


def lora_config(run):
    from peft import LoraConfig

    return LoraConfig(
        r=run.rank,
        lora_alpha=run.alpha,
        lora_dropout=run.dropout or 0.0,
        target_modules=run.target_modules,
        use_dora=run.method == "dora",
        use_rslora=run.method == "rslora",
        task_type="CAUSAL_LM",
    )


def prepare_for_method(run, model, gradient_checkpointing: bool):
    """Return (model, peft_config or None) for the trainer."""
    if run.method == "full":
        return model, None
    if run.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    return model, lora_config(run)


def load_starting_point(
    run, base_location: str, start_model_dir, dtype, quant, gradient_checkpointing: bool
):
    """The weights a run continues when it starts from an SFT run (methods[].start_from): that
    run's full model, or the base model (4-bit for QLoRA) with that run's adapter, trainable."""
    if run.method == "full":
        return load_base_model(run.model, str(start_model_dir), dtype, None, run.training.attention)
    from peft import PeftModel

    model = load_base_model(run.model, base_location, dtype, quant, run.training.attention)
    # The method's preparation (QLoRA's k-bit one); the adapter is the SFT run's, not a new one.
    model, _ = prepare_for_method(run, model, gradient_checkpointing)
    return PeftModel.from_pretrained(model, str(start_model_dir), is_trainable=True)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total). 4-bit weights are packed two per byte, so count them as stored x 2."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
