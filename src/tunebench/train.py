"""Rule train: one run of the matrix with TRL's SFTTrainer (+ PEFT, + bitsandbytes for QLoRA).

A failure inside training (an exception, an out-of-memory) is a result, not a crash: the result
file records status and reason and the job exits 0, so the rest of the matrix goes on.
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed
from trl import SFTConfig, SFTTrainer

from tunebench import measure, models
from tunebench.data.tokenize import TokenizedUnavailable, check_available, load_split
from tunebench.io import write_json
from tunebench.matrix import RunConfig

log = logging.getLogger("tunebench.train")


class LossGuard(TrainerCallback):
    """Stop early on a NaN/inf loss instead of training on garbage for hours."""

    def __init__(self):
        self.bad_loss = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                self.bad_loss = (state.global_step, f"{key} {value}")
                control.should_training_stop = True
                return


class MemoryLimitExceeded(MemoryError):
    """The CPU counterpart of a CUDA out-of-memory: the harness's own ceiling was crossed."""


class MemoryCeiling(TrainerCallback):
    """Stop a run whose process RSS exceeds `limit_gb` (resources.memory_limit_gb)."""

    def __init__(self, limit_gb: float):
        import psutil

        self.limit = limit_gb * measure.GIB
        self.process = psutil.Process()

    def on_step_end(self, args, state, control, **kwargs):
        rss = self.process.memory_info().rss
        if rss > self.limit:
            raise MemoryLimitExceeded(
                f"process memory {rss / measure.GIB:.2f} GB exceeds resources.memory_limit_gb "
                f"{self.limit / measure.GIB:.2f} at step {state.global_step}"
            )


# Trainer writes trainer_state.json last: a checkpoint without it was cut off by a kill.
CHECKPOINT_COMPLETE = "trainer_state.json"


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint that was fully written; partial ones (killed mid-save) are moved
    aside to `incomplete/` so that neither resume nor checkpoint rotation trips over them."""
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for checkpoint in found:
        if (checkpoint / CHECKPOINT_COMPLETE).is_file():
            return str(checkpoint)
        (folder / "incomplete").mkdir(exist_ok=True)
        checkpoint.rename(folder / "incomplete" / f"{checkpoint.name}-{time.time_ns()}")
    return None


def fit_length(dataset, max_length: int, too_long: str):
    """Examples over max_length are dropped (default: their response would be cut) or truncated
    (keeping the start, as TRL does). Returns the dataset and how many were affected."""
    over = sum(len(ids) > max_length for ids in dataset["input_ids"])
    if too_long == "truncate":
        kept = dataset.map(
            lambda ex: {
                "input_ids": ex["input_ids"][:max_length],
                "completion_mask": ex["completion_mask"][:max_length],
            }
        )
    else:
        kept = dataset.filter(lambda ex: len(ex["input_ids"]) <= max_length)
    return kept.remove_columns(["id", "prompt_length"]), over


def sft_config(run: RunConfig, out_dir: Path, report_to: str) -> SFTConfig:
    t = run.training
    dtype = models.training_dtype(t.precision)
    schedule = {"max_steps": t.max_steps} if t.max_steps else {"num_train_epochs": t.epochs}
    save = (
        {"save_strategy": "steps", "save_steps": t.save_steps, "save_total_limit": 2}
        if t.save_steps
        else {"save_strategy": "no"}
    )
    return SFTConfig(
        output_dir=str(out_dir),
        **schedule,
        **save,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=run.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        # Unsloth sets up its own checkpointing when it loads the model.
        gradient_checkpointing=t.gradient_checkpointing and run.backend == "hf",
        packing=t.packing,
        max_length=t.max_length,
        completion_only_loss=True,
        bf16=dtype == torch.bfloat16 and run.method != "qlora",
        fp16=dtype == torch.float16 and run.method != "qlora",
        use_cpu=not torch.cuda.is_available(),
        seed=run.seed,
        data_seed=run.seed,
        logging_steps=t.logging_steps,
        report_to=report_to,
        run_name=run.run_id,
        disable_tqdm=True,
        dataloader_num_workers=0,
        full_determinism=t.deterministic,
        # The default (True) logs a NaN loss as a finite number: LossGuard must see it.
        logging_nan_inf_filter=False,
    )


def _tracking(tracking, run_dir: Path) -> str:
    """W&B offline unless an API key is set; the key itself never reaches config or results."""
    if not tracking.wandb:
        return "none"
    os.environ.setdefault("WANDB_PROJECT", tracking.project)
    os.environ["WANDB_DIR"] = str(run_dir)
    if not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_MODE"] = "offline"
    return "wandb"


def train_run(
    run: RunConfig,
    model_location: str,
    tokenized_dir: Path,
    run_dir: Path,
    tracking,
    memory_limit_gb: float | None = None,
) -> dict:
    set_seed(run.seed)
    measure.reset_peak_memory()
    tokenizer = models.load_tokenizer(run.model, model_location)
    limit, too_long = run.training.max_length, run.dataset.too_long
    train_set, long_train = fit_length(load_split(tokenized_dir, "train"), limit, too_long)
    val_set, long_val = fit_length(load_split(tokenized_dir, "validation"), limit, too_long)
    dtype = models.training_dtype(run.training.precision)
    quant = None
    if run.method == "qlora":
        quant = models.quantization_config(run.quant_type, run.double_quant, run.compute_dtype)
        dtype = models.DTYPES[run.compute_dtype]
    if run.backend == "unsloth":
        from tunebench import unsloth_backend

        model = unsloth_backend.load_model(run, model_location, dtype, models.hub_kwargs(run.model))
        peft_config = None
    else:
        model = models.load_base_model(run.model, model_location, dtype, quant)
        model, peft_config = models.prepare_for_method(
            run, model, run.training.gradient_checkpointing
        )
    guard = LossGuard()
    callbacks = [guard] + ([MemoryCeiling(memory_limit_gb)] if memory_limit_gb else [])
    trainer = SFTTrainer(
        model=model,
        args=sft_config(run, run_dir / "checkpoints", _tracking(tracking, run_dir)),
        train_dataset=train_set,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if run.method == "qlora" and not torch.cuda.is_available():
        models.disable_cpu_bf16_repacking(trainer.model)
    trainable, total = models.count_parameters(trainer.model)
    # A killed or preempted job left checkpoints: resume with optimizer, LR schedule, RNG and
    # data-order state restored (Trainer does all four) instead of starting again.
    checkpoint = last_complete_checkpoint(run_dir / "checkpoints")
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - started
    memory = measure.peak_memory()
    if guard.bad_loss is not None:
        step, loss = guard.bad_loss
        return {
            "status": "failed",
            "reason": f"non-finite {loss} at step {step}",
            "trainable_params": trainable,
            "total_params": total,
            **memory,
        }
    val_loss = trainer.evaluate(val_set)["eval_loss"] if len(val_set) else None
    trainer.save_model(str(run_dir / "model"))
    tokenizer.save_pretrained(str(run_dir / "model"))
    tokens = max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "status": "ok",
        "reason": "",
        "trainable_params": trainable,
        "total_params": total,
        "train_seconds": train_seconds,
        "train_tokens": tokens,
        "tokens_per_second": tokens / train_seconds if train_seconds else None,
        "steps": output.global_step,
        "resumed_from_step": int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None,
        "train_loss_mean": output.training_loss,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "validation_loss": val_loss,
        f"{'truncated' if too_long == 'truncate' else 'dropped'}_too_long": {
            "train": long_train,
            "validation": long_val,
        },
        "log_history": trainer.state.log_history,
        **memory,
    }


def failure_status(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(err).lower():
        return "oom"
    if isinstance(err, models.ModelNotFound):
        return "missing_model"
    if isinstance(err, TokenizedUnavailable):
        return err.status
    return "failed"


def run_and_record(
    run: RunConfig,
    builtin_dir: Path | None,
    tokenized_dir: Path,
    run_dir: Path,
    result_path: Path,
    tracking,
    threads: int,
    memory_limit_gb: float | None = None,
    backend_error: BaseException | None = None,
) -> dict:
    """Train and always write a result file; return it. `backend_error`: the backend could not
    be imported (e.g. Unsloth without a GPU): recorded as this run's failure."""
    torch.set_num_threads(threads)
    started = time.time()
    try:
        if backend_error is not None:
            raise backend_error
        check_available(tokenized_dir)
        location = models.model_location(run.model, builtin_dir)
        outcome = train_run(run, location, tokenized_dir, run_dir, tracking, memory_limit_gb)
    except (Exception, torch.OutOfMemoryError) as err:  # a failed run is a row, not a crash
        traceback.print_exc()
        outcome = {
            "status": failure_status(err),
            "reason": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
            **measure.peak_memory(),
        }
    hw = measure.hardware()
    result = {
        "run_id": run.run_id,
        "config": run.model_dump(mode="json"),
        "axes": run.axes(),
        **outcome,
        "wall_seconds": time.time() - started,
        "accelerator_hours": measure.accelerator_hours(outcome.get("train_seconds") or 0, hw),
        "seed": run.seed,
        "provenance": measure.provenance(),
    }
    write_json(result_path, result)
    return result
