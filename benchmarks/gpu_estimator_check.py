"""Predicted vs measured peak GPU memory and step time, on a real GPU, for real architectures
with random-initialised weights (memory and speed do not depend on the weight values).

For each configuration below: the estimate (tunebench.estimate, from the configuration alone),
then a few optimizer steps with transformers' Trainer (the class TRL's SFTTrainer extends),
PEFT and bitsandbytes, set up as tunebench's train stage sets them up (bf16 autocast, float32
adapters, prepare_model_for_kbit_training for QLoRA), on padded batches whose longest row is
`seq_len` tokens. Peak memory is torch's max reserved/allocated over the training steps; step
time the mean of the steps after the first WARMUP_STEPS.

    python benchmarks/gpu_estimator_check.py --out DIR          # on a GPU (about 5 minutes)
    python benchmarks/gpu_estimator_check.py --out DIR --tiny   # the plumbing, on a CPU

Writes DIR/gpu_estimator_check.json and .md. Needs torch, transformers, peft, bitsandbytes;
not pydantic, TRL or snakemake (the GPU machine lacks them), so it imports only
tunebench.estimate.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tunebench.estimate import (  # noqa: E402
    Setup,
    architectures,  # noqa: E402
    estimate,
)
from tunebench.estimate.gpus import find  # noqa: E402
from tunebench.estimate.setup import config_from_fields  # noqa: E402

GIB = 1024**3
WARMUP_STEPS = 4  # not timed: allocator growth, cuBLAS heuristics, optimizer state creation
# Architectures by hub id from tunebench's table of known models (estimate/architectures.csv:
# the sizes from each model's config.json; no weights are downloaded), and a tiny one.
TINY = dict(
    model_type="llama",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    tie_word_embeddings=True,
)
ALL_LINEAR = "all-linear"
QV = ("q_proj", "v_proj")
QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
CHECKS = [
    ("meta-llama/Llama-3.2-1B", Setup("full", batch_size=4, seq_len=1024)),
    (
        "meta-llama/Llama-3.2-1B",
        Setup(
            "full",
            optimizer="adamw_bnb_8bit",
            gradient_checkpointing=True,
            batch_size=4,
            seq_len=1024,
        ),
    ),
    ("meta-llama/Llama-3.2-1B", Setup("lora", rank=16, batch_size=4, seq_len=1024)),
    (
        "meta-llama/Llama-3.2-1B",
        Setup(
            "lora",
            rank=16,
            target_modules=QV,
            gradient_checkpointing=True,
            batch_size=8,
            seq_len=1024,
        ),
    ),
    (
        "meta-llama/Llama-3.2-1B",
        Setup("rslora", rank=64, batch_size=4, seq_len=1024, gradient_accumulation=2),
    ),
    ("meta-llama/Llama-3.2-1B", Setup("dora", rank=16, batch_size=4, seq_len=1024)),
    (
        "meta-llama/Llama-3.2-1B",
        Setup(
            "qlora",
            rank=16,
            quant_type="nf4",
            double_quant=True,
            gradient_checkpointing=True,
            batch_size=4,
            seq_len=1024,
        ),
    ),
    (
        "meta-llama/Llama-3.2-1B",
        Setup(
            "qlora",
            rank=16,
            quant_type="fp4",
            optimizer="paged_adamw_8bit",
            batch_size=4,
            seq_len=1024,
        ),
    ),
    (
        "meta-llama/Llama-3.2-1B",
        Setup("lora", rank=16, attention="eager", batch_size=4, seq_len=1024),
    ),
    ("meta-llama/Llama-3.2-1B", Setup("lora", rank=16, dropout=0.05, batch_size=4, seq_len=1024)),
    ("meta-llama/Llama-3.2-1B", Setup("full", compute_dtype="float32", batch_size=2, seq_len=1024)),
    (
        "meta-llama/Llama-3.2-1B",
        Setup("lora", rank=16, compute_dtype="float32", batch_size=4, seq_len=1024),
    ),
    (
        "meta-llama/Llama-3.2-1B",
        Setup(
            "qlora",
            rank=16,
            quant_type="nf4",
            double_quant=True,
            optimizer="paged_adamw_32bit",
            gradient_checkpointing=True,
            batch_size=8,
            seq_len=2048,
        ),
    ),
    (
        "meta-llama/Llama-3.2-3B",
        Setup("lora", rank=32, target_modules=QV, batch_size=4, seq_len=768),
    ),
    (
        "meta-llama/Llama-3.2-3B",
        Setup(
            "full",
            optimizer="adamw_torch_fused",
            gradient_checkpointing=True,
            batch_size=2,
            seq_len=2048,
        ),
    ),
    (
        "meta-llama/Llama-3.1-8B",
        Setup(
            "lora",
            rank=16,
            target_modules=QV,
            gradient_checkpointing=True,
            batch_size=4,
            seq_len=2048,
        ),
    ),
    (
        "meta-llama/Llama-3.1-8B",
        Setup(
            "full",
            optimizer="adamw_bnb_8bit",
            gradient_checkpointing=True,
            batch_size=2,
            seq_len=1024,
        ),
    ),
]
# Run after the constants were fitted (calibration.py), predicted before measuring.
# Published configurations (benchmarks/data/published_memory.csv rows), for issue 15's resources
# mode: the study's architecture with random weights at its batch and length, on this stack.
PUBLISHED_CHECKS = [
    # fms-acceleration a100_80gb.csv: Mistral-7B, batch 4 packed to 4096, checkpointing.
    (
        "mistralai/Mistral-7B-v0.1",
        Setup("full", gradient_checkpointing=True, batch_size=4, seq_len=4096, padding_free=True),
    ),
    (
        "mistralai/Mistral-7B-v0.1",
        Setup(
            "lora",
            rank=16,
            target_modules=QKVO,
            gradient_checkpointing=True,
            batch_size=4,
            seq_len=4096,
            padding_free=True,
        ),
    ),
    # PEFT method_comparison MetaMathQA: Llama-3.2-3B, batch 4, at most 768 tokens.
    ("meta-llama/Llama-3.2-3B", Setup("full", batch_size=4, seq_len=768)),
    (
        "meta-llama/Llama-3.2-3B",
        Setup("dora", rank=32, target_modules=QV, batch_size=4, seq_len=768),
    ),
    (
        "mistralai/Mistral-7B-v0.1",
        Setup(
            "qlora",
            rank=16,
            target_modules=QKVO,
            quant_type="nf4",
            gradient_checkpointing=True,
            batch_size=4,
            seq_len=4096,
            padding_free=True,
        ),
    ),
]
HELD_OUT_CHECKS = [
    ("Qwen/Qwen2-1.5B", Setup("lora", rank=16, batch_size=4, seq_len=1024)),
    (
        "Qwen/Qwen2-1.5B",
        Setup(
            "qlora",
            rank=16,
            quant_type="nf4",
            double_quant=True,
            gradient_checkpointing=True,
            batch_size=8,
            seq_len=1024,
        ),
    ),
    ("google/gemma-2b", Setup("lora", rank=8, target_modules=QV, batch_size=4, seq_len=1024)),
    (
        "google/gemma-2b",
        Setup(
            "full",
            optimizer="adamw_bnb_8bit",
            gradient_checkpointing=True,
            batch_size=2,
            seq_len=1024,
        ),
    ),
    (
        "mistralai/Mistral-7B-v0.1",
        Setup("lora", rank=16, gradient_checkpointing=True, batch_size=2, seq_len=4096),
    ),
    (
        "mistralai/Mistral-7B-v0.1",
        Setup(
            "qlora",
            rank=64,
            quant_type="nf4",
            double_quant=True,
            optimizer="paged_adamw_8bit",
            gradient_checkpointing=True,
            batch_size=4,
            seq_len=2048,
        ),
    ),
    ("microsoft/Phi-3-mini-4k-instruct", Setup("dora", rank=8, batch_size=2, seq_len=1024)),
    ("HuggingFaceTB/SmolLM2-135M", Setup("full", batch_size=8, seq_len=2048)),
]
TINY_CHECKS = [
    ("tiny", Setup("full", compute_dtype="float32", batch_size=2, seq_len=32)),
    ("tiny", Setup("lora", rank=4, compute_dtype="float32", batch_size=2, seq_len=32)),
    (
        "tiny",
        Setup(
            "qlora",
            rank=4,
            quant_type="nf4",
            double_quant=True,
            compute_dtype="float32",
            batch_size=2,
            seq_len=32,
        ),
    ),
]


class PaddedRows(torch.utils.data.Dataset):
    """Random token rows of length seq_len-8..seq_len: every batch is padded, as in SFT; with
    `packed`, every row is exactly seq_len long (packed sequences, no padding)."""

    def __init__(self, n: int, seq_len: int, vocab: int, seed: int = 0, packed: bool = False):
        rng = random.Random(seed)
        shortest = seq_len if packed else max(1, seq_len - 8)
        self.rows = [
            [rng.randrange(3, vocab) for _ in range(rng.randint(shortest, seq_len))]
            for _ in range(n)
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i]}


def collate(rows):
    longest = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_model(config, setup: Setup, scratch: Path, cuda: bool):
    """Random weights; QLoRA loads them back through from_pretrained with a 4-bit config, as a
    real checkpoint would load."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, setup.compute_dtype)
    device = "cuda" if cuda else "cpu"
    if setup.method == "qlora":
        folder = scratch / "random-model"
        if not folder.is_dir():
            with torch.device(device):
                AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(folder)
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=setup.quant_type,
            bnb_4bit_use_double_quant=setup.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=dtype,
            quantization_config=quant,
            device_map={"": device},
            attn_implementation=setup.attention,
        )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=setup.gradient_checkpointing
        )
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=setup.attention
            )
    if setup.method == "full":
        return model
    target = setup.target_modules
    peft_config = LoraConfig(
        r=setup.rank,
        lora_alpha=2 * setup.rank,
        target_modules=target if isinstance(target, str) else list(target),
        lora_dropout=setup.dropout,
        use_dora=setup.method == "dora",
        use_rslora=setup.method == "rslora",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, peft_config)
    if setup.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def measure(config, setup: Setup, scratch: Path, cuda: bool, steps: int) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    model = build_model(config, setup, scratch, cuda)
    half = setup.compute_dtype in ("bfloat16", "float16") and setup.method != "qlora"
    args = TrainingArguments(
        output_dir=str(scratch / "out"),
        max_steps=steps,
        per_device_train_batch_size=setup.batch_size,
        gradient_accumulation_steps=setup.gradient_accumulation,
        learning_rate=1e-4,
        optim=setup.optimizer,
        gradient_checkpointing=setup.gradient_checkpointing,
        bf16=half and setup.compute_dtype == "bfloat16",
        fp16=half and setup.compute_dtype == "float16",
        use_cpu=not cuda,
        save_strategy="no",
        logging_steps=1000,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    data = PaddedRows(
        steps * setup.batch_size * setup.gradient_accumulation,
        setup.seq_len,
        config.vocab_size,
        packed=setup.padding_free,
    )
    clock = StepClock()
    trainer = Trainer(
        model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[clock]
    )
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = clock.times[WARMUP_STEPS:]
    result = {"step_seconds": sum(timed) / max(len(timed), 1), "step_times": clock.times}
    if cuda:
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe(arch: str, setup: Setup) -> str:
    parts = [arch, setup.method]
    if setup.rank:
        parts.append(f"r{setup.rank}")
        target = setup.target_modules
        parts.append(
            target if isinstance(target, str) else "".join(t.removesuffix("_proj") for t in target)
        )
    if setup.quant_type:
        parts.append(setup.quant_type + ("+dq" if setup.double_quant else ""))
    if setup.dropout:
        parts.append(f"dropout{setup.dropout}")
    parts += [f"b{setup.batch_size}", f"s{setup.seq_len}"]
    if setup.attention != "sdpa":
        parts.append(setup.attention)
    if setup.compute_dtype != "bfloat16":
        parts.append(setup.compute_dtype)
    if setup.gradient_accumulation > 1:
        parts.append(f"ga{setup.gradient_accumulation}")
    if setup.gradient_checkpointing:
        parts.append("ckpt")
    if setup.optimizer != "adamw_torch":
        parts.append(setup.optimizer)
    return " ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny models on a CPU: plumbing")
    parser.add_argument(
        "--held-out", action="store_true", help="the configurations no constant was fitted on"
    )
    parser.add_argument(
        "--published", action="store_true", help="published configurations (issue 15)"
    )
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    gpu_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    gpu = find(gpu_name) if cuda else None
    rows = []
    if args.tiny:
        checks, name = TINY_CHECKS, "gpu_estimator_check"
    elif args.published:
        checks, name = PUBLISHED_CHECKS, "gpu_estimator_check_published"
    elif args.held_out:
        checks, name = HELD_OUT_CHECKS, "gpu_estimator_check_held_out"
    else:
        checks, name = CHECKS, "gpu_estimator_check"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for arch, setup in checks:
        config = config_from_fields(**TINY) if arch == "tiny" else architectures.config(arch)
        config._attn_implementation = setup.attention
        row = {"config": describe(arch, setup), "architecture": arch, "setup": asdict(setup)}
        t0 = time.perf_counter()
        try:
            predicted = estimate(config, setup, [gpu] if gpu else [])
            row |= {
                "estimate_seconds": time.perf_counter() - t0,
                "predicted_reserved_gib": predicted.memory.peak_reserved / GIB,
                "predicted_allocated_gib": predicted.memory.peak_allocated / GIB,
                "predicted_terms_gib": predicted.memory.gib(),
                "predicted_step_seconds": (
                    predicted.speeds[gpu.name].step_seconds if gpu else None
                ),
            }
        except Exception as err:  # noqa: BLE001 - measure anyway; predictions can be redone
            row["estimate_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        scratch = Path(tempfile.mkdtemp(prefix="tb-gpu-check-"))
        try:
            row |= measure(config, setup, scratch, cuda, args.steps)
        except Exception as err:  # noqa: BLE001 - a failed configuration is a row, not a stop
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(
            json.dumps({k: v for k, v in row.items() if k not in ("setup", "predicted_terms_gib")}),
            flush=True,
        )
        rows.append(row)
        # After every configuration: a run stopped at its time limit keeps what it measured.
        record = {"gpu": gpu_name, "versions": versions(), "steps": args.steps, "rows": rows}
        (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    lines = [
        f"# Predicted vs measured on {gpu_name}",
        "",
        f"Versions: {record['versions']}. {args.steps} optimizer steps per configuration.",
        "",
        "| configuration | predicted reserved GiB | measured reserved GiB | error | "
        "predicted allocated GiB | measured allocated GiB | predicted step s | measured step s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r.get("peak_reserved_gib")
        if "predicted_reserved_gib" not in r:
            lines.append(f"| {r['config']} | {r['estimate_error']} | {m} | | | | | |")
            continue
        err = f"{(r['predicted_reserved_gib'] - m) / m:+.1%}" if m else r.get("error", "")
        lines.append(
            f"| {r['config']} | {r['predicted_reserved_gib']:.2f} | "
            f"{m if m is None else f'{m:.2f}'} | {err} | {r['predicted_allocated_gib']:.2f} | "
            f"{r.get('peak_allocated_gib') and round(r['peak_allocated_gib'], 2)} | "
            f"{r['predicted_step_seconds'] and round(r['predicted_step_seconds'], 3)} | "
            f"{round(r['step_seconds'], 3) if 'step_seconds' in r else ''} |"
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
