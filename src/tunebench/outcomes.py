"""How a step that did not finish becomes a row of the table instead of a crash of the matrix.

One table maps an exception to a status (`status_of`), and one recorder (`record`) writes the
result file of every step that can fail on its own: pre-training a built-in model, training a
run, evaluating a run or an untuned baseline. A step whose input recorded a failure takes that
status on (`require_ok`), so the table says why each cell is empty.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tunebench import measure
from tunebench.io import read_json, sha256_file, write_json

# Every status a result can carry, and what it means (the table's `status` column).
STATUSES = {
    "ok": "finished",
    "oom": "out of memory: a CUDA out-of-memory, a failed CPU allocation, or the process "
    "crossing resources.memory_limit_gb",
    "failed": "an exception (the reason is its message) or a non-finite loss",
    "missing_model": "the model's folder, hub id or file could not be found or loaded",
    "predicted_oom": "not trained: its predicted peak GPU memory exceeds resources.gpu_memory_gb "
    "(resources.predicted_oom: skip)",
    "skipped": "not attempted: a step it needs did not finish",
    "pruned": "stopped by the search (search:) at a rung, by its validation score: not a "
    "failure; the row keeps the step and the score",
}
# Statuses that are not failures: a table with only these rows finished.
NOT_FAILED = ("ok", "pruned")

# Messages of allocation failures from libraries that raise their own exception types
# (torch's CPU allocator raises RuntimeError "DefaultCPUAllocator: can't allocate memory").
OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


class StageFailure(Exception):
    """An expected way for a step not to finish; `status` is its row's status. `details` go
    into the result beside status and reason (e.g. parameter counts of a run that diverged)."""

    status = "failed"

    def __init__(self, reason: str, status: str | None = None, **details):
        super().__init__(reason)
        if status is not None:
            self.status = status
        self.details = details


class ModelNotFound(StageFailure, FileNotFoundError):
    status = "missing_model"


class MemoryLimitExceeded(StageFailure, MemoryError):
    """The CPU counterpart of a CUDA out-of-memory: resources.memory_limit_gb was crossed."""

    status = "oom"


class MemoryCeiling:
    """resources.memory_limit_gb: a step whose process memory (RSS) crosses it stops as an `oom`
    row, the CPU counterpart of a CUDA out-of-memory. Checked by training and pre-training after
    every optimizer step and by evaluation after every batch."""

    def __init__(self, limit_gb: float | None):
        import psutil

        self.limit = limit_gb * measure.GIB if limit_gb else None
        self.process = psutil.Process()

    @classmethod
    def from_mb(cls, limit_mb: int) -> MemoryCeiling:
        return cls(limit_mb / 1024 if limit_mb else None)

    def check(self, where: str) -> None:
        if self.limit is None:
            return
        rss = self.process.memory_info().rss
        if rss > self.limit:
            raise MemoryLimitExceeded(
                f"process memory {rss / measure.GIB:.2f} GB exceeds resources.memory_limit_gb "
                f"{self.limit / measure.GIB:.2f} at {where}"
            )


def status_of(err: BaseException) -> str:
    if isinstance(err, StageFailure):
        return err.status
    # torch.OutOfMemoryError is matched by name: this module must not import torch.
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return "oom"
    if any(message in str(err).lower() for message in OOM_MESSAGES):
        return "oom"
    return "failed"


def reason_of(err: BaseException) -> str:
    """One line: our own failures say what happened; others keep their exception type."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return first if isinstance(err, StageFailure) else f"{type(err).__name__}: {first}"


def require_ok(record_path: Path, what: str, status: str | None = None) -> None:
    """Raise if the step that wrote `record_path` did not finish: with its own status (a missing
    model stays `missing_model` in every row that needs it), or `status` if given."""
    recorded = read_json(record_path)
    if recorded.get("status", "ok") != "ok":
        raise StageFailure(
            f"{what} did not finish ({recorded['status']}): {recorded.get('reason', '')}",
            status=status or recorded["status"],
        )


def record(
    result_path: Path,
    identity: dict,
    work: Callable[[], dict],
    attempts: Path | None = None,
) -> dict:
    """Run `work()` (it returns the step's measurements) and always write `result_path`.

    The result holds `identity`, status and reason, the peak memory of the process (unless the
    step measured its own), wall time and provenance. A failed result is also copied to
    `attempts/<time>.json` (default: `attempts/` beside the result), so that a retry, which
    replaces the result, loses nothing."""
    started = time.time()
    try:
        outcome = {"status": "ok", "reason": "", **work()}
    except Exception as err:  # every failure is a row; KeyboardInterrupt/SystemExit are not
        traceback.print_exc()
        outcome = {
            "status": status_of(err),
            "reason": reason_of(err),
            **getattr(err, "details", {}),
        }
    result = {
        **identity,
        **measure.peak_memory(),
        **outcome,
        "wall_seconds": time.time() - started,
        "provenance": measure.provenance(),
    }
    write_json(result_path, result)
    if result["status"] != "ok":
        folder = attempts or Path(result_path).parent / "attempts"
        write_json(folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns()}.json", result)
    return result


def next_attempt(record_path: str | Path) -> str:
    """The `attempt` a step is started with, which its result records. "" the first time; after
    a success, what that result recorded; after a failure, a new value. The workflow passes it
    as a param, so Snakemake's params rerun trigger retries exactly the steps that failed."""
    if not os.path.isfile(record_path):  # the usual case when planning: cheaper than raising
        return ""
    try:
        recorded = read_json(record_path)
    except ValueError:  # half a file from a crash outside our atomic writes: start afresh
        return ""
    if recorded.get("status", "ok") == "ok":
        return recorded.get("attempt", "")
    return f"retry after {recorded['status']} {sha256_file(record_path)[:8]}"
