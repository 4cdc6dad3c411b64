"""Per-job resource requests, in the names Snakemake and its Slurm executor use.

Train and evaluate jobs take `resources.train` / `resources.evaluate` (for training, `auto`
sizes each run from its estimate), then every matching `resources.overrides` entry in order,
so a 70B full fine-tune and a 1B LoRA ask for different nodes. Partition and account come
from the experiment or the environment, never from code.
"""

from __future__ import annotations

import os

from tunebench.job_requests import matching, merge
from tunebench.spec import Experiment, JobResources

# Host memory to load a model: its 16-bit checkpoint, with room for the process around it.
HOST_BYTES_PER_PARAM = 3.0
MIN_HOST_GB = 8.0
LOAD_MINUTES = 15  # loading, saving and the validation pass, beside the training steps


def auto_train(exp: Experiment, run) -> JobResources:
    """`resources.train: auto`: the smallest GPU class the run's predicted peak (times the
    headroom) fits on, host memory for its checkpoint, and its predicted time with headroom."""
    from tunebench.estimate import machine_calibration
    from tunebench.estimate.gpus import find
    from tunebench.estimate.runs import estimate_experiment

    auto = exp.resources.auto
    classes = sorted(((find(c.gpu), c.slurm) for c in auto.gpus), key=lambda c: c[0].memory_gib)
    gpus = [gpu for gpu, _ in classes] or [find("A100-80GB")]
    record = estimate_experiment(exp, [run], gpus, calibrated=False)[0]
    if "error" in record:
        return JobResources(gpus=1, mem_gb=MIN_HOST_GB, runtime_minutes=auto.runtime_minutes)
    calibration = machine_calibration.load(exp)

    def need(slurm: str) -> float:
        """The predicted peak on that class: with a preflight's ratios of that class."""
        on_it = machine_calibration.apply(record, run, calibration, gpus, gpu_class=slurm)
        return on_it["predicted_peak_gb"] * auto.memory_headroom

    chosen = next(((g, s) for g, s in classes if need(s) <= g.memory_gib), None)
    if chosen is None and classes:  # nothing fits: the largest (predicted_oom may skip it)
        chosen = classes[-1]
    gpu, slurm = chosen if chosen else (gpus[0], None)
    hours = record["gpus"][gpu.name]["train_hours"]
    minutes = int(hours * 60 * auto.time_headroom) + LOAD_MINUTES if hours else auto.runtime_minutes
    return JobResources(
        gpus=1,
        gpu_model=slurm,
        cpus_per_gpu=auto.cpus_per_gpu,
        mem_gb=max(MIN_HOST_GB, record["total_params"] * HOST_BYTES_PER_PARAM / 1024**3),
        runtime_minutes=minutes,
    )


def predicted_oom_limit_gb(exp: Experiment) -> float:
    """The GPU memory a `predicted_oom: skip` run must be predicted to fit in (0: off)."""
    res = exp.resources
    if res.predicted_oom != "skip":
        return 0.0
    if res.gpu_memory_gb:
        return res.gpu_memory_gb
    from tunebench.estimate.gpus import find

    return max(find(c.gpu).memory_gib for c in res.auto.gpus)


def resolve(exp: Experiment, kind: str, axes: dict | None = None, run=None) -> JobResources:
    """kind: train | evaluate | default; axes: the run's fields (None for other jobs); run:
    the run itself, which `train: auto` sizes from its estimate."""
    base = getattr(exp.resources, kind)
    if base == "auto":
        base = auto_train(exp, run) if run is not None else JobResources(gpus=1)
    if axes is None or kind == "default":
        return base
    return merge(base, *matching(exp, kind, axes))


def snakemake_resources(exp: Experiment, kind: str, axes: dict | None = None, run=None) -> dict:
    """Resource values for a rule (ints and strings; 0 or "" where nothing is asked)."""
    job = resolve(exp, kind, axes, run)
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


def nodes_spanned(exp: Experiment, run) -> int:
    """How many nodes the run's training job spans (resources.train.nodes, overrides)."""
    return resolve(exp, "train", run.axes(), run).nodes or 1


def spanning_nodes(exp: Experiment, run) -> dict:
    """The resources of a training job over several nodes, as snakemake-executor-plugin-slurm
    asks for them: --nodes N and one task per node (`mpi` makes the job step run the command
    itself, which starts the tasks with srun; tasks_per_gpu 0 keeps the plugin from turning
    `tasks` into --ntasks-per-gpu, its issue #316), and each node's share of the GPUs as
    --gres, a per-node request (--gpus counts the whole job and may land unevenly)."""
    job = snakemake_resources(exp, "train", run.axes(), run)
    nodes = nodes_spanned(exp, run)
    per_node = job["gpu"] // nodes
    model = f"{job['gpu_model']}:" if job["gpu_model"] else ""
    return job | {
        "gpu": 0,  # no --gpus: the GPUs are asked per node, as gres
        "gpu_model": "",
        "nodes": nodes,
        "mpi": "srun",
        "tasks": nodes,
        "tasks_per_gpu": 0,
        "gres": f"gpu:{model}{per_node}" if per_node else "",
    }
