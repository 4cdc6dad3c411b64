"""Build a tiny Llama-architecture model from a config and pre-train it on the built-in corpus."""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    DataCollatorForLanguageModeling,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)

from tunebench.builtin.architecture import llama_config


def build_model(spec, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A randomly initialised Llama with the sizes in `spec` (a BuiltinModel)."""
    config = llama_config(
        spec,
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def packed_blocks(lines: list[str], tokenizer, block_size: int) -> Dataset:
    """Concatenate the corpus (EOS between lines) and cut it into equal blocks (LM packing)."""
    ids: list[int] = []
    for line in lines:
        ids.extend(tokenizer(line, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    n_blocks = len(ids) // block_size
    blocks = [ids[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]
    return Dataset.from_dict({"input_ids": blocks})


def pretrain(
    spec,
    tokenizer,
    lines: list[str],
    out_dir: Path,
    work_dir: Path,
    seed: int,
    callbacks: tuple = (),
) -> dict:
    """Pre-train from scratch; save the model and tokenizer to `out_dir`. Returns training stats.
    `callbacks`: Trainer callbacks (the memory ceiling)."""
    set_seed(seed)
    model = build_model(spec, tokenizer)
    dataset = packed_blocks(lines, tokenizer, spec.block_size)
    args = TrainingArguments(
        output_dir=str(work_dir),
        max_steps=spec.pretrain_steps,
        per_device_train_batch_size=spec.pretrain_batch_size,
        learning_rate=spec.pretrain_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, spec.pretrain_steps // 20),
        weight_decay=0.01,
        logging_steps=max(1, spec.pretrain_steps // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=list(callbacks),
    )
    output = trainer.train()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "final_train_loss": output.training_loss,
        "steps": output.global_step,
        "train_seconds": output.metrics.get("train_runtime"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus_blocks": len(dataset),
        "log_history": trainer.state.log_history,
    }
