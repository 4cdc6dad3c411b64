"""The estimator's fitted constants, and how they were fitted.

Everything else in the estimate is counted (parameters, states, saved activations). These few
numbers stand for what cannot be counted from a configuration: the CUDA caching allocator's
overhead, fixed workspaces (cuBLAS, NCCL-free single GPU), and how close to the GPU's peak
rate matrix work runs. `benchmarks/estimator_accuracy.py --fit` fits them on every published
row (benchmarks/data/published_memory.csv) and prints the values below; the accuracy it reports
is leave-one-source-out: each source's rows are predicted with constants fitted on the others.
The fit minimises the mean absolute error with under-predictions weighted twice: an
out-of-memory crash costs more than a request that was too large.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryConstants:
    unattributed: float  # allocated beyond what is counted, as a share of it (temporaries)
    allocator_overhead: float  # reserved / allocated - 1 at the peak
    workspace_gib: float  # fixed: cuBLAS workspaces, the allocator's first blocks
    context_gib: float  # CUDA context: counted by nvidia-smi, not by torch


@dataclass(frozen=True)
class SpeedConstants:
    matmul_efficiency: float  # achieved share of the dense peak on large matmuls
    step_overhead_s: float  # per optimizer step: optimizer launches, data loading, logging
    layer_overhead_s: float  # per decoder layer and micro-batch: kernel launches, small ops


# `python benchmarks/estimator_accuracy.py --fit`, 2026-11-30: 103 rows, 7 sources.
MEMORY = MemoryConstants(
    unattributed=0.05, allocator_overhead=0.0, workspace_gib=0.6, context_gib=0.3
)
SPEED = SpeedConstants(matmul_efficiency=0.70, step_overhead_s=0.1, layer_overhead_s=0.001)
