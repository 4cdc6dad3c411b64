"""Trainer callbacks shared by fine-tuning (train.py) and pre-training (builtin/pretrain.py):
stop on a non-finite loss, enforce the memory ceiling, stop at a search's rung, keep a clock that
survives resume, and keep a small progress file that `tunebench run` and `tunebench status` read."""

from __future__ import annotations

import math
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

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


class StopAtRung(TrainerCallback):
    """A search's rung (search/halving.py): stop at `step` of a run whose schedule is defined on
    its full length, saving a full checkpoint there (weights, optimizer, scheduler, RNG and the
    callbacks' states, as Trainer saves any checkpoint), from which a promoted run resumes."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True


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


class ProgressFile(TrainerCallback):
    """Rewrite a small JSON file (layout.TRAIN_PROGRESS) at the start, after the first step, at
    most every `every_seconds` after that, and at the end: where a run is, how fast it goes and
    when it will end, for whoever watches the results folder from another shell or host.

    Rates are over this segment of the run (since it started or resumed): the file is for a
    person watching, the result file keeps the whole run's figures. Only the first process
    writes when several train one run; a killed run leaves its last state, and its pid/host
    let a reader tell it is gone."""

    def __init__(self, path: Path, run_id: str, every_seconds: float = 2.0):
        self.path, self.run_id, self.every_seconds = Path(path), run_id, every_seconds
        self.started = self.start_step = self.start_tokens = None
        self.last_write = -math.inf
        self.loss = self.loss_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        self.start_step, self.start_tokens = state.global_step, state.num_input_tokens_seen
        self.write(state, "training")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if (logs or {}).get("loss") is not None:
            self.loss, self.loss_step = float(logs["loss"]), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        first = state.global_step == (self.start_step or 0) + 1
        if first or time.monotonic() - self.last_write >= self.every_seconds:
            self.write(state, "training")

    def on_train_end(self, args, state, control, **kwargs):
        self.write(state, "finished")

    def record(self, state, status: str) -> dict:
        elapsed = time.monotonic() - self.started if self.started is not None else 0.0
        steps = state.global_step - (self.start_step or 0)
        per_step = elapsed / steps if steps > 0 else None
        tokens = (state.num_input_tokens_seen or 0) - (self.start_tokens or 0)
        left = max(state.max_steps - state.global_step, 0) if state.max_steps else None
        return {
            "run_id": self.run_id,
            "status": status,
            "step": state.global_step,
            "max_steps": state.max_steps or None,
            "resumed_from_step": self.start_step or None,
            "loss": self.loss,
            "loss_step": self.loss_step,
            "tokens_per_second": tokens / elapsed if tokens > 0 and elapsed > 0 else None,
            "seconds_per_step": per_step,
            "elapsed_seconds": elapsed,
            "eta_seconds": left * per_step if per_step is not None and left is not None else None,
            # The peak so far: a job killed after training (while saving a large model) still
            # leaves its memory here (the H200 check lost a 7B full run's that way).
            **self.peak_memory(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    @staticmethod
    def peak_memory() -> dict:
        from tunebench import measure

        return measure.peak_memory()

    def write(self, state, status: str) -> None:
        if not state.is_world_process_zero:
            return
        from tunebench.io import write_json

        try:
            write_json(self.path, self.record(state, status))
        except OSError:  # a full or flaky disk must not fail the training it reports on
            return
        self.last_write = time.monotonic()
