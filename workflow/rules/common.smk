# The experiment -> wildcards, input functions and per-job settings. The matrix itself is
# computed by the tunebench library (src/tunebench/matrix.py), the same code `tunebench plan`
# runs. Nothing here imports torch or transformers: building the DAG stays cheap.

import re
from functools import cache

from snakemake.utils import validate

from tunebench import layout, outcomes
from tunebench.experiment import validate_matrix
from tunebench.io import read_json
from tunebench.matrix import (
    SCORING_ONLY,
    baselines,
    dataset_key,
    exported_runs,
    model_key,
    tokenizer_key,
)
from tunebench.search import halving
from tunebench.search import seeds as adaptive_seeds
from tunebench.resources import (
    nodes_spanned,
    predicted_oom_limit_gb,
    snakemake_resources,
    spanning_nodes,
)
from tunebench.slurm import normalise_cancelled_status

# What the user wrote, against the exported schema (the one editors use); then the pydantic
# model itself, whose messages name the key and which checks what a schema cannot.
validate(config, "../schemas/experiment.schema.json", set_default=False)
EXPERIMENT, _RUNS = validate_matrix(dict(config), "experiment config")

# A scancel'ed Slurm job must end the workflow, not hang it (see tunebench/slurm.py).
normalise_cancelled_status()

ROOT = str(layout.results_root(EXPERIMENT.name))
MEMORY_LIMIT_MB = int((EXPERIMENT.resources.memory_limit_gb or 0) * 1024)
# resources.predicted_oom: skip: the GPU memory a run must be predicted to fit (0: off).
PREDICTED_OOM_MB = int(predicted_oom_limit_gb(EXPERIMENT) * 1024)
RUNS = {run.run_id: run for run in _RUNS}
# Adaptive seeds (training.seeds.adaptive): every seed a round may add is a run of the DAG; which
# ones train is decided per round by the seeds_round checkpoint (search.smk).
ADAPTIVE = EXPERIMENT.training.adaptive
FIRST_ROUND = [run.run_id for run in _RUNS] if ADAPTIVE else []
ADAPTIVE_SET = frozenset(
    run.run_id for run in (adaptive_seeds.every_seed(EXPERIMENT) if ADAPTIVE else [])
)
RUNS.update(
    {r.run_id: r for r in adaptive_seeds.every_seed(EXPERIMENT)} if ADAPTIVE else {}
)
# Content keys by name, hashed once: input functions and params look them up per job.
MODEL_KEY = {m.name: model_key(m) for m in EXPERIMENT.models}
TOKENIZER_KEY = {m.name: tokenizer_key(m) for m in EXPERIMENT.models}
DATASET_KEY = {d.name: dataset_key(d) for d in EXPERIMENT.datasets}
MODELS = {MODEL_KEY[m.name]: m for m in EXPERIMENT.models}
DATASETS = {DATASET_KEY[d.name]: d for d in EXPERIMENT.datasets}
BASELINES = [
    (MODEL_KEY[m.name], DATASET_KEY[d.name]) for m, d in baselines(EXPERIMENT, _RUNS)
]
# A search (search:): its searched runs and rung steps; search.smk trains and decides them.
SEARCHED = [r.run_id for r in halving.searched_runs(EXPERIMENT, _RUNS)]
SEARCHED_SET = frozenset(SEARCHED)  # looked up once per run when planning
RUNG_STEPS = (
    halving.rung_steps(
        EXPERIMENT.training.max_steps,
        EXPERIMENT.search.eta,
        EXPERIMENT.search.min_steps,
    )
    if SEARCHED
    else []
)
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
    """The folder of a base model the workflow makes (a DAG output: a built-in model
    pre-trained, a GGUF imported); "" for hub or local models."""
    if model.builtin is not None:
        return at_root(layout.BASE_MODEL, model=MODEL_KEY[model.name])
    if model.gguf is not None:
        return at_root(layout.IMPORTED_MODEL, model=MODEL_KEY[model.name])
    return ""


def tokenized_dir(model, dataset):
    return at_root(
        layout.TOKENIZED,
        dataset=DATASET_KEY[dataset.name],
        tokenizer=TOKENIZER_KEY[model.name],
    )


def data_dir(dataset):
    return at_root(layout.DATA, dataset=DATASET_KEY[dataset.name])


def model_and_data_inputs(model, dataset):
    """What an untuned model's evaluation needs: the tokenised and prepared data, and the
    model's folder if the workflow makes it."""
    inputs = {
        "tokenized": at_root(
            layout.TOKENIZED_MANIFEST,
            dataset=DATASET_KEY[dataset.name],
            tokenizer=TOKENIZER_KEY[model.name],
        ),
        "data": at_root(layout.DATA_MANIFEST, dataset=DATASET_KEY[dataset.name]),
    }
    if model.made_here:
        inputs["model"] = base_model_dir(model)
    return inputs


@cache
def _run_inputs(run_id):
    """What a run's training needs. Its evaluation needs only the training result: the rest
    is upstream of it already, and each input costs every job of a large matrix planning
    time (benchmarks/planning.py)."""
    run = RUNS[run_id]
    inputs = model_and_data_inputs(run.model, run.dataset)
    del inputs["data"]  # upstream of the tokenised data
    if run.start_from is not None:  # dpo/orpo after SFT: that run trains first, once
        inputs["start_from"] = at_root(layout.TRAIN_RESULT, run_id=run.start_from)
    # A search's last rung (the ordinary train job) continues the rung before it.
    if run_id in SEARCHED_SET and len(RUNG_STEPS) > 1:
        inputs["rung"] = at_root(layout.RUNG_RESULT, run_id=run_id, step=RUNG_STEPS[-2])
    return inputs


def run_inputs(wildcards):
    return dict(_run_inputs(wildcards.run_id))


def baseline_inputs(wildcards):
    return model_and_data_inputs(MODELS[wildcards.model], DATASETS[wildcards.dataset])


def tokenizer_source(wildcards):
    """A built-in tokenizer and an imported GGUF's are DAG outputs; a hub/local model brings
    its own."""
    model = TOKENIZER_OWNER[wildcards.tokenizer]
    if model.builtin is not None:
        return {"tokenizer": at_root(layout.TOKENIZER, tokenizer=wildcards.tokenizer)}
    if model.gguf is not None:
        return {"tokenizer": base_model_dir(model)}
    return {}


def run_of(wildcards):
    return RUNS[wildcards.run_id]


def attempt_of(record, wildcards):
    """The attempt a step is started with: "" the first time, the recorded value after a
    success, a new value after a failure, so Snakemake's params trigger reruns exactly the
    failed steps, for bare `snakemake` as for `tunebench run` (outcomes.next_attempt).
    """
    return outcomes.next_attempt(at_root(record, **dict(wildcards.items())))


def attempt(record):
    """A param that makes the next invocation retry a step whose result recorded a failure."""
    return lambda w: attempt_of(record, w)


# ---------------------------------------------------------------- the params of a run's jobs
# One params function per job, looking up what is computed once per run: every function a rule
# gives Snakemake costs each job of a 10,000-run matrix planning time (benchmarks/planning.py).


@cache
def _train_settings(run_id):
    run = RUNS[run_id]
    return {
        # Without scoring-only settings: changing a metric must not retrain.
        "run": run.model_dump_json(exclude=SCORING_ONLY),
        "model_dir": base_model_dir(run.model),
        "tokenized": tokenized_dir(run.model, run.dataset),
        "run_dir": at_root(layout.RUN, run_id=run_id),
        # The folder of the SFT run a dpo/orpo run continues ("": none).
        "start_from": (
            at_root(layout.RUN, run_id=run.start_from) if run.start_from else ""
        ),
    }


@cache
def _evaluate_settings(run_id):
    run = RUNS[run_id]
    # The dataset with its metrics: changing a metric re-scores.
    return _train_settings(run_id) | {
        "dataset": run.dataset.model_dump_json(),
        "data": data_dir(run.dataset),
    }


def training_processes(run_id):
    """How many processes train a run (resources.distributed; not part of run ids): as the
    experiment says, unless the GPUs of its training job differ per run (overrides, `train:
    auto`): then one per GPU of its own job."""
    res = EXPERIMENT.resources
    if res.distributed.processes or (not res.overrides and res.train != "auto"):
        return res.training_processes()
    return max(_run_resources("train", run_id)["gpu"], 1)


def training_nodes(run_id):
    """How many nodes a run's training job spans (resources.train.nodes; 1 unless asked)."""
    if not EXPERIMENT.resources.spans_nodes():
        return 1
    return nodes_spanned(EXPERIMENT, RUNS[run_id])


def train_job(wildcards):
    """A train job's params: the run, its paths, its command and this step's attempt."""
    run = RUNS[wildcards.run_id]
    return _train_settings(wildcards.run_id) | {
        "tunebench": tunebench_command(run.backend),
        "attempt": attempt_of(layout.TRAIN_RESULT, wildcards),
        "processes": training_processes(wildcards.run_id),
        "nodes": training_nodes(wildcards.run_id),
    }


def evaluate_job(wildcards):
    """An evaluate job's params: the run, the dataset with its metrics, paths and attempt."""
    return _evaluate_settings(wildcards.run_id) | {
        "attempt": attempt_of(layout.EVAL_RESULT, wildcards),
    }


# ---------------------------------------------------------------- resources per job


@cache
def _run_resources(kind, run_id):
    run = RUNS[run_id]
    return snakemake_resources(EXPERIMENT, kind, run.axes(), run)


@cache
def _base_resources(model):
    axes = {"model": MODELS[model].name, "method": "base"}
    return snakemake_resources(EXPERIMENT, "evaluate", axes)


def asked(resources):
    """Only the resources a job asks for (no gpu=0, no empty partition)."""
    return {name: value for name, value in resources.items() if value}


def per_job_resources(kind, resolved):
    """A rule's resources: resources.<kind>, then for each job the matching
    resources.overrides, `resolved(wildcards)` (looked up per job only when there are any:
    each function costs every job of a large matrix some planning time), plus the harness's
    memory ceiling."""
    ceiling = {"memory_limit_mb": MEMORY_LIMIT_MB}
    if kind == "train":
        ceiling["predicted_oom_mb"] = PREDICTED_OOM_MB
    sized_per_run = kind == "train" and EXPERIMENT.resources.train == "auto"
    if not EXPERIMENT.resources.overrides and not sized_per_run:
        return asked(snakemake_resources(EXPERIMENT, kind)) | ceiling
    return {
        name: lambda w, name=name: resolved(w)[name]
        for name in snakemake_resources(EXPERIMENT, kind)
    } | ceiling


def run_resources(kind):
    """A run's train or evaluate job (overrides matched on the run's fields)."""
    return per_job_resources(kind, lambda w: _run_resources(kind, w.run_id))


def base_resources():
    """An untuned model's evaluation (overrides matched on the model, method `base`)."""
    return per_job_resources("evaluate", lambda w: _base_resources(w.model))


# Runs whose training spans nodes: their train jobs are submitted differently (train.smk).
SPANNING_NODES = [run_id for run_id in RUNS if training_nodes(run_id) > 1]
# (?!) matches nothing: no run spans nodes.
SPANNING_NODES_PATTERN = "|".join(map(re.escape, SPANNING_NODES)) or "(?!)"


@cache
def _spanning(run_id):
    return spanning_nodes(EXPERIMENT, RUNS[run_id])


def spanning_resources():
    """The train resources of a run spanning nodes (resources.spanning_nodes)."""
    names = _spanning(SPANNING_NODES[0]) if SPANNING_NODES else {}
    ceiling = {"memory_limit_mb": MEMORY_LIMIT_MB, "predicted_oom_mb": PREDICTED_OOM_MB}
    return {
        name: lambda w, name=name: _spanning(w.run_id)[name] for name in names
    } | ceiling


# Data preparation, pre-training and the table: resources.default. The memory ceiling is a
# resource, not a param, so changing it re-runs nothing.
SMALL_JOB = asked(snakemake_resources(EXPERIMENT, "default"))
PRETRAIN_JOB = SMALL_JOB | {"memory_limit_mb": MEMORY_LIMIT_MB}


def comparison_outputs():
    return [at_root(name) for name in layout.COMPARISON]


def report_outputs():
    """The recommendation and HTML report, asked for by the default target beside the table,
    so that results compiled before the report existed get it on the next run."""
    return [at_root(layout.RECOMMENDATION), at_root(layout.HTML_REPORT)]


# ---------------------------------------------------------------- exports (export:)
EXPORT = EXPERIMENT.export
EXPORTED = [run.run_id for run in exported_runs(EXPERIMENT, _RUNS)]


def export_outputs():
    """The export folders the experiment asks for: chosen runs, then each dataset's best."""
    if EXPORT is None:
        return []
    chosen = [at_root(layout.EXPORT, run_id=run_id) for run_id in EXPORTED]
    best = [at_root(layout.EXPORT_BEST, dataset=d.name) for d in EXPERIMENT.datasets]
    return chosen + (best if EXPORT.best_by else [])


# ---------------------------------------------------------------- a search (search.smk)


def promoted(rung):
    """The runs a decision on disk sends on from `rung` (after its checkpoint job ran)."""
    return read_json(checkpoints.promote.get(rung=rung).output[0])["promoted_runs"]


def rung_output(run_id, rung):
    """A run's result at a rung: a rung result, or its training result at the last one."""
    if rung == len(RUNG_STEPS) - 1:
        return at_root(layout.TRAIN_RESULT, run_id=run_id)
    return at_root(layout.RUNG_RESULT, run_id=run_id, step=RUNG_STEPS[rung])


def rung_results(wildcards):
    """What a decision ranks: the rung's results of the runs that reached it."""
    rung = int(wildcards.rung)
    runs = SEARCHED if rung == 0 else promoted(rung - 1)
    return [rung_output(run_id, rung) for run_id in runs]


def searched_eval_outputs():
    """The evaluations of the searched runs that reach the end (after the last decision)."""
    if not SEARCHED:
        return []
    last = SEARCHED if len(RUNG_STEPS) == 1 else promoted(len(RUNG_STEPS) - 2)
    return [at_root(layout.EVAL_RESULT, run_id=run_id) for run_id in last]


def search_decisions():
    return [at_root(layout.SEARCH_DECISION, rung=k) for k in range(len(RUNG_STEPS) - 1)]


def rung_inputs(wildcards):
    """A rung's training: the run's inputs and, after the first rung, the rung before."""
    inputs = train_inputs(wildcards)
    inputs.pop("rung", None)  # the last rung's: this one names its own
    step = int(wildcards.step)
    before = [s for s in RUNG_STEPS if s < step]
    if before:
        inputs["rung"] = at_root(
            layout.RUNG_RESULT, run_id=wildcards.run_id, step=before[-1]
        )
    return inputs


def rung_job(wildcards):
    """A rung's params: the train job's, with this rung's own attempt."""
    return train_job(wildcards) | {"attempt": attempt_of(layout.RUNG_RESULT, wildcards)}


def evaluated_runs(wildcards):
    """Every run's evaluation; a search's only for the runs it takes to the end, and its
    decisions (pruned runs are rows of the table from them)."""
    unsearched = sorted(set(RUNS) - SEARCHED_SET - ADAPTIVE_SET)
    runs = [at_root(layout.EVAL_RESULT, run_id=run_id) for run_id in unsearched]
    return runs + searched_eval_outputs() + search_decisions() + adaptive_outputs()


# ---------------------------------------------------------------- adaptive seeds (search.smk)


def seeds_decision(k):
    """The decision after round `k` (after its checkpoint job ran)."""
    return read_json(checkpoints.seeds_round.get(round=k).output[0])


def round_runs(k):
    """The runs evaluated before the decision after round `k`: the first round's and the
    seeds each earlier decision added."""
    runs = list(FIRST_ROUND)
    for j in range(k):
        runs += seeds_decision(j)["added_runs"]
    return runs


def seeds_round_inputs(wildcards):
    """What a round's decision reads: its runs' evaluations and the decisions before it."""
    k = int(wildcards.round)
    evaluations = [at_root(layout.EVAL_RESULT, run_id=r) for r in round_runs(k)]
    return evaluations + [at_root(layout.SEEDS_ROUND, round=j) for j in range(k)]


def adaptive_outputs():
    """Every decided run's evaluation and every round's decision, up to the one that adds no
    seed (one seed per configuration a round: max - first + 1 rounds at most)."""
    if not ADAPTIVE:
        return []
    runs, decisions, k = list(FIRST_ROUND), [], 0
    while True:
        decisions.append(at_root(layout.SEEDS_ROUND, round=k))
        added = seeds_decision(k)["added_runs"]
        if not added:
            break
        runs += added
        k += 1
    return [at_root(layout.EVAL_RESULT, run_id=r) for r in runs] + decisions
