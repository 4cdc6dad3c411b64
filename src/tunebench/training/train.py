"""Rule train: one run of the matrix with TRL's SFTTrainer (+ PEFT, + bitsandbytes for QLoRA),
or its DPOTrainer / ORPOTrainer for the preference objectives (preference.py).

`train_run` does the work and returns the run's measurements; the stage (stages.train) records
it with outcomes.record, so a failure inside training is a row of the table, not a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from tunebench import layout, measure, models, precision
from tunebench.data.tokenize import REJECTED, load_split
from tunebench.matrix import RunConfig
from tunebench.outcomes import MemoryCeiling, StageFailure
from tunebench.training import distributed, memory_profile
from tunebench.training.callbacks import (
    LossGuard,
    MemoryCeilingCallback,
    ProgressFile,
    StopAtRung,
    TrainingClock,
    training_clock,
)

log = logging.getLogger("tunebench.training.train")

# Trainer writes trainer_state.json last: a checkpoint without it was cut off by a kill.
CHECKPOINT_COMPLETE = "trainer_state.json"


def checkpoints_by_step(folder: Path) -> dict[int, Path]:
    """Trainer's checkpoint folders (checkpoint-<step>) in `folder`, by step."""
    found = (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit())
    return {int(p.name.split("-")[-1]): p for p in found}


def last_complete_checkpoint(folder: Path, before: int | None = None) -> str | None:
    """The newest checkpoint that was fully written (and, with `before`, of an earlier step);
    partial ones (killed mid-save) are moved aside to `incomplete/` so that neither resume nor
    checkpoint rotation trips over them."""
    if not folder.is_dir():
        return None
    steps = checkpoints_by_step(folder)
    found = [steps[s] for s in sorted(steps, reverse=True) if before is None or s < before]
    for checkpoint in found:
        if (checkpoint / CHECKPOINT_COMPLETE).is_file():
            return str(checkpoint)
        (folder / "incomplete").mkdir(exist_ok=True)
        # Every process of a distributed run looks at once: whichever is first moves it.
        with contextlib.suppress(FileNotFoundError):
            checkpoint.rename(folder / "incomplete" / f"{checkpoint.name}-{time.time_ns()}")
    return None


def drop_checkpoints(folder: Path, before: int | None = None) -> None:
    """Free the disk of checkpoints no resume needs: those of steps before `before` (a rung's
    new checkpoint is the one its run continues from), or, with no `before`, all of them once
    the run has saved its model. A full fine-tuning checkpoint of SmolLM2-135M with its AdamW
    state is 1.6 GB: the 20-run SmolLM2 replay grid kept 37 GB of them before this."""
    if before is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for step, checkpoint in checkpoints_by_step(folder).items():
        if step < before:
            shutil.rmtree(checkpoint, ignore_errors=True)


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
    unused = [c for c in ("id", "prompt_length", REJECTED) if c in kept.column_names]
    return kept.remove_columns(unused), over


def checkpointing(on: bool) -> dict:
    """training.gradient_checkpointing under the name the installed transformers takes: the HF
    lock's (5.23) calls it activation_checkpointing and warns on every run given the old name
    (TrainingArguments.__post_init__); the Unsloth stack's (5.17) knows only the old one."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    new = "activation_checkpointing"
    return {new if new in fields else "gradient_checkpointing": on}


def trainer_arguments(
    run: RunConfig, out_dir: Path, report_to: str, sharding: dict | None = None
) -> dict:
    """The TrainingArguments every objective shares (SFTConfig, DPOConfig and ORPOConfig take
    them all). `sharding`: FSDP settings (distributed.fsdp_config) when the run's processes
    shard it."""
    t = run.training
    dtype = models.training_dtype(t.precision)
    schedule = {"max_steps": t.max_steps} if t.max_steps else {"num_train_epochs": t.epochs}
    save = (
        {"save_strategy": "steps", "save_steps": t.save_steps, "save_total_limit": 2}
        if t.save_steps
        else {"save_strategy": "no"}
    )
    return dict(
        output_dir=str(out_dir),
        **schedule,
        **save,
        # training.batch_size is the global batch: each process takes its share.
        per_device_train_batch_size=distributed.per_process_batch(
            t.batch_size, distributed.world_size()
        ),
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=run.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        # transformers 5 folded warmup_ratio into warmup_steps: a value below 1 is a fraction of
        # the total steps (TrainingArguments.get_warmup_steps), which is what warmup_ratio means.
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        # Unsloth sets up its own checkpointing when it loads the model.
        **checkpointing(t.gradient_checkpointing and run.backend == "hf"),
        torch_compile=t.torch_compile,
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
        # Both come back with a checkpoint, so tokens/s after a resume spans the whole run:
        # TrainingClock's seconds, and Trainer's count of tokens that are not padding (TRL's
        # own `num_tokens` restarts at 0). Padding-free rows have no attention mask: there it
        # counts tokens other than the pad token (EOS), one fewer per example. ORPO's batches
        # have no `input_ids` to count: its tokens are not counted.
        restore_callback_states_from_checkpoint=True,
        include_num_input_tokens_seen="non_padding" if run.objective != "orpo" else "no",
        fsdp=sharding is not None,
        fsdp_config=sharding,
    )


def sft_config(
    run: RunConfig, out_dir: Path, report_to: str, sharding: dict | None = None
) -> SFTConfig:
    t = run.training
    return SFTConfig(
        **trainer_arguments(run, out_dir, report_to, sharding),
        # BFD packing (TRL's default strategy) implies padding-free batches: one row of several
        # examples whose position_ids restart, which SDPA and flash attention keep apart.
        packing=t.packing,
        padding_free=t.padding_free,
        # Examples are already cut to max_length (fit_length); padding-free batches without
        # packing must not be given one (TRL refuses: it cannot enforce it there).
        max_length=None if t.padding_free and not t.packing else t.max_length,
        completion_only_loss=True,
        use_liger_kernel=t.liger_kernel,
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


def check_settings(run: RunConfig) -> None:
    """Settings this machine cannot honour fail the run at once, naming the key."""
    if run.training.liger_kernel and not torch.cuda.is_available():
        raise StageFailure(
            "training.liger_kernel needs a CUDA GPU (Liger's kernels are Triton GPU kernels) "
            "and this job has none; set it to false for CPU runs"
        )


def check_predicted_fit(
    run: RunConfig,
    model_location: str,
    limit_gb: float,
    calibration: dict | None = None,
    tokenized: Path | None = None,
) -> None:
    """resources.predicted_oom: skip: a run predicted not to fit in `limit_gb` of GPU memory
    is a `predicted_oom` row, and no GPU time is spent on it. A preflight's `calibration`
    scales the prediction, with the ratios measured on this GPU where a preflight ran on one
    like it (estimate/machine_calibration.py)."""
    from tunebench.estimate.runs import estimate_at

    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    predicted = estimate_at(
        run, model_location, calibration=calibration, gpu_name=gpu_name, tokenized=tokenized
    )
    if predicted["predicted_peak_gb"] > limit_gb:
        how = f" ({predicted['calibrated_by']})" if "calibrated_by" in predicted else ""
        raise StageFailure(
            f"predicted peak GPU memory {predicted['predicted_peak_gb']:.1f} GiB{how} exceeds "
            f"resources.gpu_memory_gb {limit_gb:.1f} GiB, so it was not trained (set "
            "resources.predicted_oom: run to train it anyway, or lower training.batch_size / "
            "max_length, or turn on training.gradient_checkpointing)",
            status="predicted_oom",
            predicted_peak_gb=predicted["predicted_peak_gb"],
            predicted_memory_gib=predicted["memory_gib"],
        )


def predicted_vs_measured(
    run: RunConfig, model_location: str, measured: dict, tokenized: Path | None = None
) -> dict:
    """What `tunebench estimate` predicts for this run, beside what it measured: each GPU run
    shows how good the estimate was. An estimate that cannot be made is noted, never fatal."""
    try:
        from tunebench.estimate.gpus import find
        from tunebench.estimate.runs import allocated_against, estimate_at, measured_against

        gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        gpus = []
        if gpu_name:
            with contextlib.suppress(KeyError):  # a GPU the table lacks: memory only
                gpus = [find(gpu_name)]
        out = measured_against(
            estimate_at(run, model_location, gpus, tokenized=tokenized), measured, gpu_name
        )
        if gpu_name is None and measured.get("peak_memory_allocated_gb"):
            # training.profile_memory on a CPU: the estimate of the run as it trained here
            # (a CPU's precision), beside the profiler's tensor peak.
            here = estimate_at(run, model_location, device="cpu", tokenized=tokenized)[
                "predicted_allocated_gb"
            ]
            out |= allocated_against(here, measured["peak_memory_allocated_gb"])
        return out
    except Exception as err:  # noqa: BLE001 - the run finished; its prediction is extra
        log.warning("no estimate for %s: %s", run.run_id, err)
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}


def train_run(
    run: RunConfig,
    model_location: str,
    tokenized_dir: Path,
    run_dir: Path,
    tracking,
    ceiling: MemoryCeiling | None = None,
    sharding: dict | None = None,
    start_dir: Path | None = None,
    stop_at_step: int = 0,
) -> dict:
    """Train one run; save its adapter (or model) and tokenizer to run_dir/model. Returns the
    run's measurements; raises on failure (see outcomes.status_of). `sharding`: FSDP settings
    when several processes shard the run (distributed.py). `start_dir`: the folder of the SFT
    run a dpo/orpo run starts from (run.start_from). `stop_at_step`: a search's rung
    (search/halving.py): train the same run up to that step only, leave a checkpoint there
    and no model, and score it on validation."""
    check_settings(run)
    set_seed(run.seed)
    measure.reset_peak_memory()
    tokenizer = models.load_tokenizer(run.model, model_location)
    limit, too_long = run.training.max_length, run.dataset.too_long
    if run.objective == "sft":
        train_set, long_train = fit_length(load_split(tokenized_dir, "train"), limit, too_long)
        val_set, long_val = fit_length(load_split(tokenized_dir, "validation"), limit, too_long)
    else:  # validation pairs are scored by evaluation; the objective's own loss is logged
        from tunebench.training import preference

        name = run.dataset.name
        train_set, long_train = preference.pairs(
            load_split(tokenized_dir, "train"), limit, too_long, name
        )
        val_set, long_val = [], 0
    dtype = models.training_dtype(run.training.precision)
    quant = None
    if run.method == "qlora":
        quant = models.quantization_config(
            run.quant_type, run.double_quant, run.compute_dtype, sharded=sharding is not None
        )
        dtype = models.DTYPES[run.compute_dtype]
    half = dtype in (torch.bfloat16, torch.float16)
    if half and not torch.cuda.is_available() and not precision.has_native_bf16():
        # Same results, tens of times slower: the run's log says which key to change.
        log.warning(
            "computing in %s on a CPU without native bf16 (%s): expect tens of times the "
            "float32 step time; set training.precision (or QLoRA's "
            "quantization.compute_dtype) to float32",
            dtype,
            precision.cpu_isa(),
        )
    if run.backend == "unsloth":
        from tunebench.training import unsloth_backend

        model = unsloth_backend.load_model(run, model_location, dtype, models.hub_kwargs(run.model))
        peft_config = None
    elif run.start_from is not None:
        model = models.load_starting_point(
            run,
            model_location,
            start_dir / "model",
            dtype,
            quant,
            run.training.gradient_checkpointing,
        )
        peft_config = None
    else:
        model = models.load_base_model(
            run.model, model_location, dtype, quant, run.training.attention
        )
        model, peft_config = models.prepare_for_method(
            run, model, run.training.gradient_checkpointing
        )
    guard = LossGuard()
    progress = ProgressFile(layout.train_progress_in(run_dir), run.run_id)  # tunebench status
    callbacks = [guard, TrainingClock(), progress]
    if ceiling is not None:
        callbacks.append(MemoryCeilingCallback(ceiling))
    if stop_at_step:
        callbacks.append(StopAtRung(stop_at_step))
    report_to = _tracking(tracking, run_dir)
    if run.objective == "sft":
        trainer = SFTTrainer(
            model=model,
            args=sft_config(run, layout.checkpoints_in(run_dir), report_to, sharding),
            train_dataset=train_set,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    else:
        arguments = trainer_arguments(run, layout.checkpoints_in(run_dir), report_to, sharding)
        trainer = preference.trainer(
            run, arguments, model, peft_config, tokenizer, train_set, callbacks
        )
    if run.method == "qlora" and not torch.cuda.is_available():
        models.disable_cpu_bf16_repacking(trainer.model)
    if sharding is not None:
        distributed.shard_on_cpu(trainer)
    trainable, total = models.count_parameters(trainer.model)
    # A killed or preempted job left checkpoints: resume with optimizer, LR schedule, RNG and
    # data-order state restored (Trainer does all four) instead of starting again. A rung
    # resumes from before its step: a step is trained, so the rung's checkpoint is saved.
    checkpoint = last_complete_checkpoint(layout.checkpoints_in(run_dir), stop_at_step or None)
    with memory_profile.tensor_peak(run.training.profile_memory) as tensors:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    if distributed.world_size() > 1:  # which wrapper trained it: the log shows DDP or FSDP
        log.warning(
            "rank %d of %d trained %s (parameters held by this rank: %d)",
            distributed.rank(),
            distributed.world_size(),
            type(trainer.model_wrapped).__name__,
            distributed.local_parameters(trainer.model_wrapped),
        )
    clock = training_clock(trainer)
    train_seconds = clock.seconds
    memory = measure.peak_memory() | tensors.result()
    # What this process holds of the model (what sharding divides), whatever else the peak holds.
    memory["model_state_gb"] = distributed.model_state_gb(trainer)
    guard.check(
        output.training_loss,
        output.global_step,
        trainable_params=trainable,
        total_params=total,
        **memory,
    )
    val_loss = trainer.evaluate(val_set)["eval_loss"] if len(val_set) else None
    if stop_at_step and output.global_step < stop_at_step:
        raise StageFailure(
            f"stopped at step {output.global_step}, before the rung at {stop_at_step}"
        )
    if not stop_at_step:  # a rung leaves its checkpoint, not a model
        distributed.full_state_dict_for_saving(trainer)
        trainer.save_model(str(run_dir / "model"))  # by the first process only
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(run_dir / "model"))
            # DPOTrainer's frozen copy of a continued adapter (its reference) is saved beside it.
            shutil.rmtree(run_dir / "model" / "ref", ignore_errors=True)
            drop_checkpoints(layout.checkpoints_in(run_dir))
    elif trainer.is_world_process_zero():  # a promoted run continues from this rung's only
        drop_checkpoints(layout.checkpoints_in(run_dir), before=output.global_step)
    tokens = trainer.state.num_input_tokens_seen or None  # None: not counted (ORPO)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    measured = {
        "steps": output.global_step,
        "train_seconds": train_seconds,
        "tokens_per_second": tokens / train_seconds if tokens and train_seconds else None,
        **memory,
    }
    return {
        "prediction": predicted_vs_measured(run, model_location, measured, tokenized_dir),
        "trainable_params": trainable,
        "total_params": total,
        "train_seconds": train_seconds,
        "train_seconds_before_resume": clock.seconds_before,
        "train_tokens": tokens,
        "tokens_per_second": tokens / train_seconds if tokens and train_seconds else None,
        "steps": output.global_step,
        "resumed_from_step": int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None,
        "train_loss_mean": output.training_loss,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "validation_loss": val_loss,
        # A search's rung: the step it stopped at (its checkpoint's); absent for a whole run.
        **({"rung_step": output.global_step} if stop_at_step else {}),
        f"{'truncated' if too_long == 'truncate' else 'dropped'}_too_long": {
            "train": long_train,
            "validation": long_val,
        },
        "log_history": trainer.state.log_history,
        "accelerator_hours": measure.accelerator_hours(train_seconds, measure.hardware()),
        **memory,
    }
