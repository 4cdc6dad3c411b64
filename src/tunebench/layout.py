"""Where every artefact of an experiment lives, relative to results/<experiment>/.

The Snakemake rules and the report both use these patterns, so one place names the layout.
"""

from __future__ import annotations

from pathlib import Path

# What every step writes in its output folder: its status, measurements and provenance.
RESULT = "result.json"
TOKENIZER = "tokenizers/{tokenizer}"
BASE_MODEL = "base_models/{model}"
BASE_MODEL_RESULT = "base_models/{model}/result.json"
PRETRAIN_WORK = "work/pretrain/{model}"
IMPORTED_MODEL = "imported_models/{model}"
IMPORTED_MODEL_RESULT = "imported_models/{model}/result.json"
IMPORT_WORK = "work/import/{model}"
DATA = "data/{dataset}"
DATA_MANIFEST = "data/{dataset}/manifest.json"
DATA_SPLITS = (
    "data/{dataset}/train.jsonl",
    "data/{dataset}/validation.jsonl",
    "data/{dataset}/test.jsonl",
)
TOKENIZED = "data/{dataset}/tokenized/{tokenizer}"
TOKENIZED_MANIFEST = "data/{dataset}/tokenized/{tokenizer}/manifest.json"
TOKENIZED_SPLITS = tuple(
    f"{TOKENIZED}/{split}.parquet" for split in ("train", "validation", "test")
)
RUN = "runs/{run_id}"
TRAIN_RESULT = "runs/{run_id}/train/result.json"
# Rewritten by the training job while it runs (step, loss, rate, ETA): tunebench status reads it.
TRAIN_PROGRESS = "runs/{run_id}/train/progress.json"
# A run's checkpoints (optimizer, scheduler and RNG included): a killed run and a search's
# promoted run resume from them.
RUN_CHECKPOINTS = "runs/{run_id}/checkpoints"
# A run stopped at a rung of a search (search:): its validation score at that step.
RUNG_RESULT = "runs/{run_id}/rungs/step-{step}/result.json"
EVAL_RESULT = "runs/{run_id}/eval/result.json"
EVAL_SAMPLES = "runs/{run_id}/eval/samples.jsonl"
EXPORT = "exports/runs/{run_id}"
EXPORT_RESULT = "exports/runs/{run_id}/result.json"
EXPORT_BEST = "exports/best/{dataset}"
EXPORT_BEST_RESULT = "exports/best/{dataset}/result.json"
EXPORT_WORK = "work/export/{name}"
BASELINE_RESULT = "baselines/{model}/{dataset}/eval/result.json"
BASELINE_SAMPLES = "baselines/{model}/{dataset}/eval/samples.jsonl"
# Each rung's promotion decision (search.halving.promote), rung 0 first.
SEARCH_DECISION = "search/rung-{rung}.json"
# Each round's adaptive seed decision (search.seeds.decide), round 0 first.
SEEDS_ROUND = "search/seeds-round-{round}.json"
# `tunebench preflight`'s report (preflight.md/.json) and the calibration later estimates use.
PREFLIGHT = "preflight"
PREFLIGHT_CALIBRATION = "preflight/calibration.json"
LOG = "logs/{rule}/{name}.log"
BENCHMARK = "benchmarks/{rule}/{name}.tsv"
COMPARISON = ("comparison.csv", "comparison.md", "comparison.html")
RECOMMENDATION = "recommendation.md"
HTML_REPORT = "report.html"  # one file, offline: recommendation, charts, tables
PLOTS = "plots"  # the report's charts as PNG


def results_root(experiment_name: str) -> Path:
    return Path("results") / experiment_name


def result_in(step_dir: Path) -> Path:
    """A step's result file in its output folder."""
    return Path(step_dir) / RESULT


def train_result_in(run_dir: Path) -> Path:
    """A run's training result, in its run folder (TRAIN_RESULT under a results root)."""
    return Path(run_dir) / "train" / RESULT


def train_progress_in(run_dir: Path) -> Path:
    """A run's progress file while it trains, in its run folder (TRAIN_PROGRESS under a root)."""
    return Path(run_dir) / "train" / "progress.json"


def run_dir(root: Path, run_id: str) -> Path:
    """A run's folder under a results root."""
    return Path(root) / RUN.format(run_id=run_id)


def checkpoints_in(run_dir: Path) -> Path:
    """A run's checkpoint folder, in its run folder (RUN_CHECKPOINTS under a results root)."""
    return Path(run_dir) / "checkpoints"
