"""`tunebench stage NAME ...`: the commands that Snakemake rules run, one per rule.

Rules pass resolved specs as JSON (from the experiment, via `params`) and every path explicitly,
so each stage is a plain function of its arguments, testable without Snakemake.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from pathlib import Path

from tunebench.spec import DatasetSpec, Evaluation, Experiment, ModelSpec, Tracking


def _quiet_libraries() -> None:
    from tunebench.redact import protect_output_streams

    protect_output_streams()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def build_tokenizer(a) -> None:
    from tunebench.builtin import wordops
    from tunebench.builtin.tokenizer import train_tokenizer
    from tunebench.io import atomic_dir

    spec = ModelSpec.model_validate_json(a.model).builtin
    words = wordops.make_lexicon(spec.corpus_words, seed=spec.corpus_seed)
    texts = wordops.corpus_lines(words, seed=spec.corpus_seed) + [
        r["instruction"] for r in wordops.instruction_rows(words[:50], list(wordops.OPERATIONS))
    ]
    with atomic_dir(a.out) as tmp:
        tokenizer = train_tokenizer(texts, spec.vocab_size, tmp)
    print(f"tokenizer: {len(tokenizer)} tokens -> {a.out}")


def pretrain(a) -> None:
    import torch
    from transformers import AutoTokenizer

    from tunebench.builtin import wordops
    from tunebench.builtin.pretrain import pretrain as run_pretrain
    from tunebench.io import atomic_dir, write_json

    torch.set_num_threads(a.threads)
    spec = ModelSpec.model_validate_json(a.model).builtin
    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    words = wordops.make_lexicon(spec.corpus_words, seed=spec.corpus_seed)
    lines = wordops.corpus_lines(words, seed=spec.corpus_seed)
    with atomic_dir(a.out) as tmp:
        stats = run_pretrain(spec, tokenizer, lines, tmp, Path(a.work), spec.seed)
        write_json(tmp / "pretrain_stats.json", stats)
    print(f"pretrained {stats['parameters']:,} parameters, final loss {stats['log_history'][-2]}")


def prepare_data(a) -> None:
    from tunebench.data.prepare import prepare

    manifest = prepare(DatasetSpec.model_validate_json(a.dataset), Path(a.out))
    print(json.dumps(manifest["counts"]))


def _model_location(model: ModelSpec, model_dir: str | None) -> str:
    from tunebench import models

    return models.model_location(model, Path(model_dir) if model_dir else None)


def tokenize(a) -> None:
    from tunebench import models
    from tunebench.data.tokenize import tokenize_dataset, write_unavailable

    model = ModelSpec.model_validate_json(a.model)
    try:
        location = a.tokenizer_dir or _model_location(model, a.model_dir)
        tokenizer = models.load_tokenizer(model, location)
    except models.ModelNotFound as err:
        # Not a crash of the matrix: every run of this model becomes a `missing_model` row.
        write_unavailable(Path(a.out), "missing_model", str(err))
        print(f"error: {err}")
        return
    dataset = DatasetSpec.model_validate_json(a.dataset)
    manifest = tokenize_dataset(tokenizer, dataset, Path(a.data), Path(a.out), location)
    print(json.dumps(manifest["splits"]))


def train(a) -> None:
    from tunebench.matrix import RunConfig

    run = RunConfig.model_validate_json(a.run)
    backend_error = None
    if run.backend == "unsloth":
        try:  # before transformers/TRL/PEFT are imported: Unsloth patches them
            from tunebench import unsloth_backend  # noqa: F401
        except Exception as err:  # e.g. no GPU with UNSLOTH_DISABLE_CPU_FALLBACK=1: a failed row
            backend_error = err
    from tunebench.train import run_and_record

    result = run_and_record(
        run,
        Path(a.model_dir) if a.model_dir else None,
        Path(a.tokenized),
        Path(a.run_dir),
        Path(a.result),
        Tracking.model_validate_json(a.tracking),
        a.threads,
        int(a.memory_limit_mb) / 1024 if a.memory_limit_mb and int(a.memory_limit_mb) else None,
        backend_error,
    )
    print(f"{run.run_id}: {result['status']} {result.get('reason', '')}")


def evaluate(a) -> None:
    import torch

    from tunebench import evaluate as ev
    from tunebench import models
    from tunebench.data.tokenize import check_available
    from tunebench.io import read_json
    from tunebench.matrix import RunConfig

    torch.set_num_threads(a.threads)
    settings = Evaluation.model_validate_json(a.evaluation)
    dataset = DatasetSpec.model_validate_json(a.dataset)
    data_dir, tokenized = Path(a.data), Path(a.tokenized)

    if a.run:
        run = RunConfig.model_validate_json(a.run)
        spec, identity = run.model, {"run_id": run.run_id, "axes": run.axes(), "kind": "run"}
        trained = read_json(a.train_result)
    else:
        spec = ModelSpec.model_validate_json(a.model)
        identity = {
            "run_id": f"base-{spec.name}-{dataset.name}",
            "axes": {"model": spec.name, "dataset": dataset.name, "method": "base"},
            "kind": "baseline",
        }
        trained = None

    def work():
        if trained is not None and trained["status"] != "ok":
            raise ev.SkipEvaluation(f"training did not finish ({trained['status']})")
        check_available(tokenized)
        location = _model_location(spec, a.model_dir)
        tokenizer = models.load_tokenizer(spec, location)
        if trained is None:
            model = ev.load_for_eval(spec, location, None, None)
        else:
            model = ev.load_trained(run, location, Path(a.run_dir))
        scores, samples = ev.evaluate_model(
            model, tokenizer, data_dir, tokenized, settings, dataset
        )
        if settings.lm_eval is not None:
            from tunebench import harness

            del model  # the harness loads its own copy
            trained_dir = Path(a.run_dir) / "model" if trained is not None else None
            full = trained is not None and run.method == "full"
            scores |= harness.run_tasks(
                settings.lm_eval,
                location,
                adapter_dir=None if full else trained_dir,
                full_dir=trained_dir if full else None,
            )
        return scores, samples

    result = ev.record(Path(a.result), Path(a.samples), identity, data_dir, work)
    print(f"{identity['run_id']}: {result['status']} EM={result.get('exact_match')}")


def compile_report(a) -> None:
    from tunebench.report import compile_comparison

    exp = Experiment.model_validate_json(a.experiment)
    compile_comparison(exp, Path(a.results), Path(a.out))


STAGES = {
    "build-tokenizer": (build_tokenizer, ["model", "out"]),
    "pretrain": (pretrain, ["model", "tokenizer", "out", "work"]),
    "prepare-data": (prepare_data, ["dataset", "out"]),
    "tokenize": (tokenize, ["model", "dataset", "model-dir", "tokenizer-dir", "data", "out"]),
    "train": (
        train,
        ["run", "model-dir", "tokenized", "run-dir", "result", "tracking", "memory-limit-mb"],
    ),
    "evaluate": (
        evaluate,
        [
            "run",
            "train-result",
            "run-dir",
            "model",
            "dataset",
            "model-dir",
            "data",
            "tokenized",
            "evaluation",
            "result",
            "samples",
        ],
    ),
    "compile": (compile_report, ["experiment", "results", "out"]),
}


def add_parsers(subparsers) -> None:
    stage = subparsers.add_parser(
        "stage", help="run one workflow step (used by the Snakemake rules)"
    )
    stages = stage.add_subparsers(dest="stage", required=True)
    for name, (func, options) in STAGES.items():
        p = stages.add_parser(name)
        for option in options:
            p.add_argument(f"--{option}", default=None)
        p.add_argument("--threads", type=int, default=1)
        p.set_defaults(func=lambda a, f=func: _run_stage(f, a))


def _run_stage(func, args) -> int:
    _quiet_libraries()
    func(args)
    return 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="tunebench stage")
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    args.func(args)
