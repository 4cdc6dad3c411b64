# The experiment -> wildcards and input functions. The matrix itself is computed by the
# tunebench library (src/tunebench/matrix.py), the same code `tunebench plan` runs.

import json

from tunebench import layout
from tunebench.cli import validate_data
from tunebench.matrix import baselines, dataset_key, model_key, tokenizer_key
from tunebench.matrix import expand as expand_matrix

EXPERIMENT = validate_data(dict(config), "experiment config")
validate(EXPERIMENT.model_dump(mode="json"), "../schemas/experiment.schema.json")

ROOT = str(layout.results_root(EXPERIMENT.name))
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


def at_root(pattern):
    return f"{ROOT}/{pattern}"


def log_path(rule_name, name_pattern):
    return at_root(layout.LOG.format(rule=rule_name, name=name_pattern))


def base_model_dir(model):
    """The folder of a built-in base model (a DAG output); None for hub or local models."""
    if model.builtin is None:
        return None
    return at_root(layout.BASE_MODEL.format(model=model_key(model)))


def tokenized_dir(model, dataset):
    return at_root(
        layout.TOKENIZED.format(dataset=dataset_key(dataset), tokenizer=tokenizer_key(model))
    )


def model_inputs(model):
    folder = base_model_dir(model)
    return [folder] if folder else []


def run_of(wildcards):
    return RUNS[wildcards.run_id]


def comparison_outputs():
    return [at_root(name) for name in layout.COMPARISON]
