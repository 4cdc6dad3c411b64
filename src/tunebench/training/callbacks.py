"""Trainer callbacks shared by fine-tuning (train.py) and pre-training (builtin/pretrain.py):
stop on a non-finite loss, enforce the memory ceiling, and keep a clock that survives resume."""

from __future__ import annotations

import math
import time

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from tunebench.outcomes import MemoryCeiling, StageFailure


class NonFiniteLoss(StageFailure):
    status = "failed"


class LossGuard(TrainerCallback):
    """Stop early on a NaN/inf loss instead of training on garbage for hours; `check()` then
    raises, so the run's row says at which step."""

    def __init__(self):
        self.bad_loss = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                self.bad_loss = (state.global_step, f"{key} {value}")
                control.should_training_stop = True
                return

    def check(self, mean_loss: float, steps: int, **details) -> None:
        """After training: a non-finite logged loss, or a non-finite mean loss (a run shorter
        than logging_steps logs none) fails the run."""
        if self.bad_loss is None and not math.isfinite(mean_loss):
            self.bad_loss = (steps, f"mean loss {mean_loss}")
        if self.bad_loss is not None:
            step, loss = self.bad_loss
            raise NonFiniteLoss(f"non-finite {loss} at step {step}", **details)


class MemoryCeilingCallback(TrainerCallback):
    """resources.memory_limit_gb, checked after every optimizer step."""

    def __init__(self, ceiling: MemoryCeiling):
        self.ceiling = ceiling

    def on_step_end(self, args, state, control, **kwargs):
        self.ceiling.check(f"step {state.global_step}")


class TrainingClock(TrainerCallback, ExportableState):
    """Seconds spent training, summed over every segment of a run that was killed and resumed.

    Saved into each checkpoint (Trainer restores ExportableState callbacks on resume when
    `restore_callback_states_from_checkpoint` is set), so tokens/s after a resume covers the
    whole run and not only its last segment. Each segment counts from its first step; time
    after the last checkpoint of a killed segment is lost with the work it did, which is
    redone after the resume."""

    def __init__(self, seconds_before: float = 0.0):
        self.seconds_before = seconds_before
        self.segment_start: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        # From the first step of the segment: a clock restored from a checkpoint is made after
        # on_train_begin has run, so every segment is timed the same way.
        if self.segment_start is None:
            self.segment_start = time.perf_counter()

    @property
    def seconds(self) -> float:
        segment = time.perf_counter() - self.segment_start if self.segment_start else 0.0
        return self.seconds_before + segment

    def state(self) -> dict:
        return {"args": {"seconds_before": self.seconds}, "attributes": {}}


def training_clock(trainer) -> TrainingClock:
    """The clock the trainer holds now (resume replaces the instance it was given)."""
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, TrainingClock))
