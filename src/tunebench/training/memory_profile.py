"""training.profile_memory: the tensor peak of training on a CPU, where no allocator counts it.

On a GPU, CUDA's caching allocator reports the peak of allocated tensors (measure.peak_memory);
a CPU has no such counter, and the process's peak RSS adds the libraries and the allocator's
arenas. torch.profiler with profile_memory sees every tensor allocation and free, and its
memory timeline (export_memory_timeline, deprecated in torch 2.13 but still the only CPU
timeline it offers) gives the bytes alive at each moment: its largest sum is the tensor peak,
the quantity the estimator predicts as peak allocated. It slows training down, so it is for
`tunebench preflight` and the estimator's CPU benchmark, not for ordinary runs.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from pathlib import Path

from tunebench.measure import GIB

KIND = "profiler_tensor_peak"  # allocated_kind of a peak measured this way


class TensorPeak:
    """What a profiled stretch of training measured: `result()` is {} when nothing was."""

    def __init__(self) -> None:
        self.peak_bytes: float | None = None

    def result(self) -> dict:
        if self.peak_bytes is None:
            return {}
        return {"peak_memory_allocated_gb": self.peak_bytes / GIB, "allocated_kind": KIND}


@contextlib.contextmanager
def tensor_peak(enabled: bool):
    """Profile the block's CPU tensor memory when `enabled` and no GPU trains (CUDA counts it
    itself); the yielded TensorPeak holds the peak once the block has ended."""
    import torch

    peak = TensorPeak()
    if not enabled or torch.cuda.is_available():
        yield peak
        return
    from torch.profiler import ProfilerActivity, profile

    # The timeline needs shapes and stacks to attribute allocations to tensors.
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        yield peak
    peak.peak_bytes = timeline_peak(prof)


def timeline_peak(prof) -> float:
    """The largest total of live tensor bytes in a finished profile's memory timeline."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "timeline.json"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*export_memory_timeline.*")
            prof.export_memory_timeline(str(path), device="cpu")
        _times, sizes = json.loads(path.read_text())
    # One list of bytes per category (parameters, gradients, optimizer state, activations, ...)
    # at each moment: the sum is what is alive then.
    return float(max((sum(at) for at in sizes), default=0))
