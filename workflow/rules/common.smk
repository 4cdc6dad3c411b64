# The experiment -> wildcards, input functions and per-job settings. The matrix itself is
# computed by the tunebench library (src/tunebench/matrix.py), the same code `tunebench plan`
# runs. Nothing here imports torch or transformers: building the DAG stays cheap.

from functools import cache

from snakemake.utils import validate

from tunebench import layout, outcomes
from tunebench.experiment import validate_matrix
from tunebench.matrix import SCORING_ONLY, baselines, dataset_key, model_key, tokenizer_key
from tunebench.resources import snakemake_resources
from tunebench.slurm import normalise_cancelled_status

# What the user wrote, against the exported schema (the one editors use); then the pydantic
# model itself, whose messages name the key and which checks what a schema cannot.
validate(config, "../schemas/experiment.schema.json", set_default=False)
EXPERIMENT, _RUNS = validate_matrix(dict(config), "experiment config")

# A scancel'ed Slurm job must end the workflow, not hang it (see tunebench/slurm.py).
normalise_cancelled_status()

ROOT = str(layout.results_root(EXPERIMENT.name))
MEMORY_LIMIT_MB = int((EXPERIMENT.resources.memory_limit_gb or 0) * 1024)
RUNS = {run.run_id: run for run in _RUNS}
# Content keys by name, hashed once: input functions and params look them up per job.
MODEL_KEY = {m.name: model_key(m) for m in EXPERIMENT.models}
TOKENIZER_KEY = {m.name: tokenizer_key(m) for m in EXPERIMENT.models}
DATASET_KEY = {d.name: dataset_key(d) for d in EXPERIMENT.datasets}
MODELS = {MODEL_KEY[m.name]: m for m in EXPERIMENT.models}
DATASETS = {DATASET_KEY[d.name]: d for d in EXPERIMENT.datasets}
BASELINES = [
    (MODEL_KEY[m.name], DATASET_KEY[d.name]) for m, d in baselines(EXPERIMENT, _RUNS)
]
# One tokenizer key -> one model that uses it (built-in models of any size share one).
TOKENIZER_OWNER = {}
for _model in EXPERIMENT.models:
    TOKENIZER_OWNER.setdefault(TOKENIZER_KEY[_model.name], _model)


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
    """The folder of a built-in base model (a DAG output); "" for hub or local models."""
    if model.builtin is None:
        return ""
    return at_root(layout.BASE_MODEL, model=MODEL_KEY[model.name])


def tokenized_dir(model, dataset):
    return at_root(
        layout.TOKENIZED,
        dataset=DATASET_KEY[dataset.name],
        tokenizer=TOKENIZER_KEY[model.name],
    )


def data_dir(dataset):
    return at_root(layout.DATA, dataset=DATASET_KEY[dataset.name])


@cache
def model_and_data_inputs(model_name, dataset_name):
    """What a job needs to load a model and score it on a dataset."""
    model = next(m for m in EXPERIMENT.models if m.name == model_name)
    dataset_key = DATASET_KEY[dataset_name]
    inputs = {
        "tokenized": at_root(
            layout.TOKENIZED_MANIFEST,
            dataset=dataset_key,
            tokenizer=TOKENIZER_KEY[model_name],
        ),
        "data": at_root(layout.DATA_MANIFEST, dataset=dataset_key),
    }
    if model.builtin is not None:
        inputs["model"] = base_model_dir(model)
    return inputs


def run_inputs(wildcards):
    run = RUNS[wildcards.run_id]
    return dict(model_and_data_inputs(run.model.name, run.dataset.name))


def baseline_inputs(wildcards):
    model, dataset = MODELS[wildcards.model], DATASETS[wildcards.dataset]
    return dict(model_and_data_inputs(model.name, dataset.name))


def tokenizer_source(wildcards):
    """A built-in tokenizer is a DAG output; a hub/local model brings its own."""
    model = TOKENIZER_OWNER[wildcards.tokenizer]
    if model.builtin is not None:
        return {"tokenizer": at_root(layout.TOKENIZER, tokenizer=wildcards.tokenizer)}
    return {}


def run_of(wildcards):
    return RUNS[wildcards.run_id]


@cache
def run_json(run_id):
    """The run's config without scoring-only settings: changing a metric must not retrain."""
    return RUNS[run_id].model_dump_json(exclude=SCORING_ONLY)


def attempt(record):
    """A param that makes the next invocation retry a step whose result recorded a failure.

    It is "" the first time, the recorded value after a success, and a new value after a
    failure, so Snakemake's params trigger reruns exactly the failed steps, and does so for
    bare `snakemake` as for `tunebench run` (outcomes.next_attempt)."""
    return lambda w: outcomes.next_attempt(at_root(record, **dict(w.items())))


# ---------------------------------------------------------------- resources per job


@cache
def _run_resources(kind, run_id):
    return snakemake_resources(EXPERIMENT, kind, RUNS[run_id].axes())


@cache
def _base_resources(model):
    axes = {"model": MODELS[model].name, "method": "base"}
    return snakemake_resources(EXPERIMENT, "evaluate", axes)


def run_resources(kind):
    """A train/evaluate rule's resources: resources.<kind>, then per run the matching
    resources.overrides (looked up per job only when there are any: each function costs
    every job of a large matrix some planning time), plus the harness's memory ceiling."""
    ceiling = {"memory_limit_mb": MEMORY_LIMIT_MB}
    if not EXPERIMENT.resources.overrides:
        return snakemake_resources(EXPERIMENT, kind) | ceiling
    return {
        name: lambda w, name=name: _run_resources(kind, w.run_id)[name]
        for name in snakemake_resources(EXPERIMENT, kind)
    } | ceiling


def base_resources():
    """The resources of an untuned model's evaluation (resources.evaluate + overrides by model)."""
    ceiling = {"memory_limit_mb": MEMORY_LIMIT_MB}
    if not EXPERIMENT.resources.overrides:
        return snakemake_resources(EXPERIMENT, "evaluate") | ceiling
    return {
        name: lambda w, name=name: _base_resources(w.model)[name]
        for name in snakemake_resources(EXPERIMENT, "evaluate")
    } | ceiling


# Data preparation, pre-training and the table: resources.default. The memory ceiling is a
# resource, not a param, so changing it re-runs nothing.
SMALL_JOB = snakemake_resources(EXPERIMENT, "default")
PRETRAIN_JOB = SMALL_JOB | {"memory_limit_mb": MEMORY_LIMIT_MB}


def comparison_outputs():
    return [at_root(name) for name in layout.COMPARISON]
