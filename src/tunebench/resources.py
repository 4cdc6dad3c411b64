"""Per-job resource requests, in the names Snakemake and its Slurm executor use.

Train and evaluate jobs take `resources.train` / `resources.evaluate`, then every matching
`resources.overrides` entry in order, so a 70B full fine-tune and a 1B LoRA ask for different
nodes. Partition and account come from the experiment or the environment, never from code.
"""

from __future__ import annotations

import os

from tunebench.spec import Experiment, JobResources


def _merge(base: JobResources, *layers: JobResources) -> JobResources:
    values = base.model_dump()
    for layer in layers:
        values |= layer.model_dump(exclude_none=True)
    return JobResources(**values)


def resolve(exp: Experiment, kind: str, axes: dict | None = None) -> JobResources:
    """kind: train | evaluate | default; axes: the run's fields (None for other jobs)."""
    base = getattr(exp.resources, kind)
    if axes is None or kind == "default":
        return base
    matching = [
        getattr(o, kind)
        for o in exp.resources.overrides
        if all(axes.get(k) == v for k, v in o.match.items())
    ]
    return _merge(base, *matching)


def snakemake_resources(exp: Experiment, kind: str, axes: dict | None = None) -> dict:
    """Resource values for a rule (ints and strings; 0 or "" where nothing is asked)."""
    job = resolve(exp, kind, axes)
    return {
        "mem_mb": int((job.mem_gb or 1) * 1024),
        "runtime": job.runtime_minutes or 60,
        "gpu": job.gpus or 0,
        "gpu_model": job.gpu_model or "",
        "cpus_per_gpu": job.cpus_per_gpu or 0,
        "slurm_partition": exp.resources.partition
        or os.environ.get("TUNEBENCH_SLURM_PARTITION", ""),
        "slurm_account": exp.resources.account or os.environ.get("TUNEBENCH_SLURM_ACCOUNT", ""),
    }
