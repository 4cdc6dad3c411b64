# The experiment -> wildcards and input functions. The matrix itself is computed by the
# tunebench library (src/tunebench/matrix.py), the same code `tunebench plan` runs.

import os
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from tunebench import envs, layout
from tunebench.cli import validate_data
from tunebench.matrix import (
    SCORING_ONLY,
    baselines,
    dataset_key,
    model_key,
    tokenizer_key,
)
from tunebench.matrix import expand as expand_matrix
from tunebench.resources import snakemake_resources
from tunebench.slurm import normalise_cancelled_status

EXPERIMENT = validate_data(dict(config), "experiment config")
validate(
    EXPERIMENT.model_dump(mode="json"),
    "../schemas/experiment.schema.json",
    set_default=False,
)

# A scancel'ed Slurm job must end the workflow, not hang it (see tunebench/slurm.py).
normalise_cancelled_status()

ROOT = str(layout.results_root(EXPERIMENT.name))
MEMORY_LIMIT_MB = int((EXPERIMENT.resources.memory_limit_gb or 0) * 1024)
RUNS = {run.run_id: run for run in expand_matrix(EXPERIMENT)}
MODELS = {model_key(m): m for m in EXPERIMENT.models}
DATASETS = {dataset_key(d): d for d in EXPERIMENT.datasets}
BASELINES = [(model_key(m), dataset_key(d)) for m, d in baselines(EXPERIMENT)]
# One tokenizer key -> one model that uses it (built-in models of any size share one).
TOKENIZER_OWNER = {}
for _model in EXPERIMENT.models:
    TOKENIZER_OWNER.setdefault(tokenizer_key(_model), _model)


wildcard_constraints:
    run_id=r"[^/]+",
    model=r"[^/]+",
    dataset=r"[^/]+",
    tokenizer=r"[^/]+",


def at_root(pattern, **fields):
    """A path under results/<experiment>/; fields fill some of the pattern's wildcards."""
    path = f"{ROOT}/{pattern}"
    return path.format(**fields) if fields else path


def log_path(rule_name, name_pattern):
    return at_root(layout.LOG.format(rule=rule_name, name=name_pattern))


def base_model_dir(model):
    """The folder of a built-in base model (a DAG output); None for hub or local models."""
    if model.builtin is None:
        return None
    return at_root(layout.BASE_MODEL, model=model_key(model))


def tokenized_dir(model, dataset):
    return at_root(
        layout.TOKENIZED, dataset=dataset_key(dataset), tokenizer=tokenizer_key(model)
    )


def model_and_data_inputs(model, dataset):
    """What a job needs to load a model and score it on a dataset."""
    inputs = {
        "tokenized": at_root(
            layout.TOKENIZED_MANIFEST,
            dataset=dataset_key(dataset),
            tokenizer=tokenizer_key(model),
        ),
        "data": at_root(layout.DATA_MANIFEST, dataset=dataset_key(dataset)),
    }
    folder = base_model_dir(model)
    if folder:
        inputs["model"] = folder
    return inputs


def run_of(wildcards):
    return RUNS[wildcards.run_id]


# ---------------------------------------------------------------- environments per backend
# With --sdm apptainer every job runs in the pinned image of its backend (containers/); without,
# hf jobs run in this environment and unsloth training in the Unsloth env, created on demand.
PROJECT = Path(workflow.basedir)
SOURCE = Path(envs.__file__).resolve().parents[1]
IN_CONTAINERS = (
    DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
)
# The Unsloth env follows this env's torch build: hf-cpu -> unsloth-cpu, hf-cuda -> unsloth-cuda.
VARIANT = envs.current_variant()
UNSLOTH_LOCK = envs.lock_file(PROJECT, "unsloth", VARIANT)
UNSLOTH_ENV = envs.env_dir(UNSLOTH_LOCK) if UNSLOTH_LOCK.is_file() else None


def image(backend):
    return envs.image_reference(PROJECT, backend)


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
    """The interpreter of a backend's stage: the Unsloth env's python (with this checkout's
    code on its path) when it is not the image's own."""
    if backend == "unsloth" and not IN_CONTAINERS:
        return f"PYTHONPATH={SOURCE} {UNSLOTH_ENV}/bin/python -m tunebench.cli"
    return "tunebench"


def run_json(wildcards):
    """The run's config without scoring-only settings: changing a metric must not retrain."""
    return run_of(wildcards).model_dump_json(exclude=SCORING_ONLY)


def train_inputs(wildcards):
    run = run_of(wildcards)
    inputs = model_and_data_inputs(run.model, run.dataset)
    if run.backend == "unsloth" and not IN_CONTAINERS:
        inputs["environment"] = str(UNSLOTH_ENV / envs.RECORD)
    return inputs


def evaluate_inputs(wildcards):
    run = run_of(wildcards)
    return {
        "train": at_root(layout.TRAIN_RESULT, run_id=wildcards.run_id),
        **model_and_data_inputs(run.model, run.dataset),
    }


def evaluate_base_inputs(wildcards):
    return model_and_data_inputs(MODELS[wildcards.model], DATASETS[wildcards.dataset])


def tokenizer_source(wildcards):
    """A built-in tokenizer is a DAG output; a hub/local model brings its own."""
    model = TOKENIZER_OWNER[wildcards.tokenizer]
    if model.builtin is not None:
        return {"tokenizer": at_root(layout.TOKENIZER, tokenizer=wildcards.tokenizer)}
    return {}


def run_resource(kind, name):
    """A resource of a train/evaluate job of one run (resources.train/evaluate + overrides)."""
    return lambda w: snakemake_resources(EXPERIMENT, kind, run_of(w).axes())[name]


def base_resource(name):
    """A resource of an untuned-model evaluation (resources.evaluate + overrides by model)."""
    return lambda w: snakemake_resources(
        EXPERIMENT, "evaluate", {"model": MODELS[w.model].name, "method": "base"}
    )[name]


# Data preparation, pre-training and the table: resources.default.
SMALL_JOB = snakemake_resources(EXPERIMENT, "default")


def comparison_outputs():
    return [at_root(name) for name in layout.COMPARISON]
