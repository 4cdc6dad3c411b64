"""What an experiment's jobs ask for before any estimate: `resources.train` / `evaluate`, then
every matching `resources.overrides` entry in order. Apart from resources.py (which also sizes
`train: auto` from the estimator) so that the estimator can read a run's requested GPU class
without importing the module that imports it.
"""

from __future__ import annotations

from tunebench.spec import Experiment, JobResources


def merge(base: JobResources, *layers: JobResources) -> JobResources:
    values = base.model_dump()
    for layer in layers:
        values |= layer.model_dump(exclude_none=True)
    return JobResources(**values)


def matching(exp: Experiment, kind: str, axes: dict) -> list[JobResources]:
    """The `kind` requests of every override whose fields all match `axes`, in order."""
    return [
        getattr(o, kind)
        for o in exp.resources.overrides
        if all(axes.get(k) == v for k, v in o.match.items())
    ]


def requested_gpu_model(exp: Experiment, run) -> str | None:
    """The GPU class a run's training job names (resources.train, then its overrides); None
    under `train: auto` without an override naming one (auto chooses it per run)."""
    base = exp.resources.train if isinstance(exp.resources.train, JobResources) else JobResources()
    return merge(base, *matching(exp, "train", run.axes())).gpu_model
