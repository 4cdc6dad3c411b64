# The software each job runs in. With --sdm apptainer every job runs in the pinned image of its
# backend (containers/); without, jobs run the same Python as the process that started the
# workflow (so `.venv/bin/tunebench run` works without an activated environment, and Slurm
# jobs, which re-run this file with that Python, do the same), and Unsloth training runs in
# the Unsloth environment, created on demand.

import os
import shlex
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from tunebench.envs import locks

PROJECT = Path(workflow.basedir).parent
SOURCE = Path(locks.__file__).resolve().parents[2]
IN_CONTAINERS = (
    DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
)
# The Unsloth env follows this env's torch build: hf-cpu -> unsloth-cpu, hf-cuda -> unsloth-cuda.
VARIANT = locks.current_variant()
UNSLOTH_LOCK = locks.lock_file(PROJECT, "unsloth", VARIANT)
UNSLOTH_ENV = locks.env_dir(UNSLOTH_LOCK) if UNSLOTH_LOCK.is_file() else None


def image(backend):
    return locks.image_reference(PROJECT, backend)


def run_image(wildcards):
    return image(run_of(wildcards).backend)


def image_named(backend):
    """What a job records as its container image: the reference --sdm apptainer runs it in;
    else the one the whole workflow runs in (docker run -e TUNEBENCH_CONTAINER_IMAGE=...), or
    "host"."""
    if IN_CONTAINERS:
        return image(backend)
    return os.environ.get("TUNEBENCH_CONTAINER_IMAGE", "host")


def tunebench_command(backend):
    """What runs a training stage: `tunebench` (see the shell prefix below), except Unsloth
    training on the host: the Unsloth env's Python with this checkout's code on its path. It
    also names the image the job records."""
    recorded = f"TUNEBENCH_CONTAINER_IMAGE={shlex.quote(image_named(backend))}"
    if backend == "unsloth" and not IN_CONTAINERS:
        return f"{recorded} PYTHONPATH={SOURCE} {UNSLOTH_ENV}/bin/python -m tunebench"
    return f"{recorded} tunebench"


# Every job runs the tunebench of the interpreter that started the workflow, found first on
# PATH (inside an image, the image's own), so `.venv/bin/tunebench run` works without an
# activated environment; Slurm jobs re-read this file with that interpreter and do the same.
# A prefix, not a param: moving the environment must not re-run finished steps.
shell.prefix(
    "set -euo pipefail; "
    f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; "
    f"export TUNEBENCH_CONTAINER_IMAGE={shlex.quote(image_named('hf'))}; "
)


def train_inputs(wildcards):
    """A run's model and data; for Unsloth training on the host, also the Unsloth env."""
    inputs = run_inputs(wildcards)
    if run_of(wildcards).backend == "unsloth" and not IN_CONTAINERS:
        inputs["environment"] = str(UNSLOTH_ENV / locks.RECORD)
    return inputs


# The image of a train job: its backend's (a function only when some run uses Unsloth).
TRAIN_CONTAINER = (
    run_image if any(r.backend == "unsloth" for r in RUNS.values()) else image("hf")
)


# Every job's software: the pinned image of the HF stack (containers/Dockerfile.hf), used with
# --sdm apptainer; train jobs of unsloth runs override it with the Unsloth image.
container: image("hf")
