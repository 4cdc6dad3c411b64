"""The Unsloth backend: FastLanguageModel loads the base model (4-bit for QLoRA, full_finetuning
for full fine-tuning) and adds the LoRA adapters. Data, SFTTrainer, callbacks and the result are
the HF path's (train.py), so HF and Unsloth rows of one configuration compare like for like.

It runs only in the Unsloth environment (containers/locks/unsloth-*.txt), and this module must
be imported before transformers, TRL and PEFT: Unsloth patches them when it is imported.
"""

from __future__ import annotations

import os

try:
    # No GPU: Unsloth 2026.10.9+ falls back to CPU (its kernels do not run; the code path does).
    # UNSLOTH_DISABLE_CPU_FALLBACK=1 (set in the Unsloth image) turns that into an error.
    import unsloth  # noqa: F401
    from unsloth import FastLanguageModel
except ModuleNotFoundError as err:
    raise ModuleNotFoundError(
        f"backend unsloth needs the Unsloth environment ({err}): the workflow creates it "
        "(`tunebench env create unsloth`) or runs the job in the tunebench-unsloth image"
    ) from err

# PEFT's "all-linear" for a decoder: every projection of attention and MLP (not lm_head).
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_model(run, location: str, dtype, hub_kwargs: dict):
    """The model SFTTrainer trains: a PEFT model for adapters, the full model for `full`."""
    checkpointing = "unsloth" if run.training.gradient_checkpointing else False
    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=location,
        max_seq_length=run.training.max_length,
        dtype=dtype,
        # Unsloth's 4-bit is nf4 with double quantisation and compute dtype = dtype; spec.py
        # rejects other QLoRA quantisation settings for this backend.
        load_in_4bit=run.method == "qlora",
        full_finetuning=run.method == "full",
        use_gradient_checkpointing=checkpointing,
        random_state=run.seed,
        **hub_kwargs,
    )
    if run.method == "full":
        return model
    target = ALL_LINEAR if run.target_modules == "all-linear" else run.target_modules
    return FastLanguageModel.get_peft_model(
        model,
        r=run.rank,
        lora_alpha=run.alpha,
        lora_dropout=run.dropout or 0.0,
        target_modules=target,
        use_rslora=run.method == "rslora",
        use_gradient_checkpointing=checkpointing,
        random_state=run.seed,
    )


def backend_versions() -> dict[str, str]:
    import unsloth_zoo

    return {"unsloth": unsloth.__version__, "unsloth_zoo": unsloth_zoo.__version__}


# Quietens Unsloth's banner-and-tips output in job logs; does not change what it computes.
os.environ.setdefault("UNSLOTH_DISABLE_LOGGING", "1")
