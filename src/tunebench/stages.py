"""`tunebench stage NAME --option value ...`: the steps the Snakemake rules run, one per rule.

Each stage is a typed function of its inputs: rules pass resolved specs as JSON (from the
experiment, via `params`) and every path explicitly, so a stage is testable without Snakemake.
The command line of each stage is derived from its signature (`add_parsers`): a parameter
`model_dir: Path | None` is the option `--model-dir`, a pydantic model is parsed from JSON, and
an empty value is None.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from tunebench import layout
from tunebench.matrix import RunConfig
from tunebench.spec import DatasetSpec, Evaluation, Experiment, ModelSpec, Tracking

CUDA_ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"


def cuda_allocator() -> str:
    """Variable-length batches fragment CUDA's caching allocator; expandable segments avoid most
    of it (PyTorch's CUDA semantics notes, PYTORCH_CUDA_ALLOC_CONF). Set before the first CUDA
    allocation and inherited by every training process; a user's own setting wins. The result
    records the one used (measure.peak_memory)."""
    return os.environ.setdefault(CUDA_ALLOC_CONF, "expandable_segments:True")


def _start(threads: int, memory_limit_mb: int):
    """What every step that computes sets first: torch's thread count; and the memory ceiling
    it checks (resources.memory_limit_gb)."""
    import torch

    from tunebench.outcomes import MemoryCeiling

    torch.set_num_threads(threads)
    return MemoryCeiling.from_mb(memory_limit_mb)


def build_tokenizer(model: ModelSpec, out: Path) -> None:
    """Train the byte-level BPE tokenizer of the built-in models."""
    from tunebench.builtin import wordops
    from tunebench.builtin.tokenizer import train_tokenizer
    from tunebench.io import atomic_dir

    spec = model.builtin
    words = wordops.make_lexicon(spec.corpus_words, seed=spec.corpus_seed)
    texts = wordops.corpus_lines(words, seed=spec.corpus_seed) + [
        r["instruction"] for r in wordops.instruction_rows(words[:50], list(wordops.OPERATIONS))
    ]
    with atomic_dir(out) as tmp:
        tokenizer = train_tokenizer(texts, spec.vocab_size, tmp)
    print(f"tokenizer: {len(tokenizer)} tokens -> {out}")


def pretrain(
    model: ModelSpec,
    tokenizer: Path,
    out: Path,
    work: Path,
    attempt: str = "",
    memory_limit_mb: int = 0,
    threads: int = 1,
) -> dict:
    """Pre-train a built-in base model; its folder's result.json says whether it finished."""
    ceiling = _start(threads, memory_limit_mb)
    from transformers import AutoTokenizer

    from tunebench import outcomes
    from tunebench.builtin import wordops
    from tunebench.builtin.pretrain import pretrain as run_pretrain
    from tunebench.io import atomic_dir
    from tunebench.training.callbacks import MemoryCeilingCallback

    spec = model.builtin

    def build() -> dict:
        loaded = AutoTokenizer.from_pretrained(tokenizer)
        words = wordops.make_lexicon(spec.corpus_words, seed=spec.corpus_seed)
        lines = wordops.corpus_lines(words, seed=spec.corpus_seed)
        with atomic_dir(out) as tmp:
            callbacks = (MemoryCeilingCallback(ceiling),)
            return run_pretrain(spec, loaded, lines, tmp, work, spec.seed, callbacks)

    identity = {"model": model.name, "kind": "pretrain", "attempt": attempt}
    result = outcomes.record(layout.result_in(out), identity, build, attempts=work / "attempts")
    print(f"pretrain {model.name}: {result['status']} {result['reason']}")
    return result


def import_gguf(model: ModelSpec, out: Path, work: Path, attempt: str = "") -> dict:
    """Import a model's GGUF file into a model folder; its result.json says whether it did."""
    from tunebench import outcomes
    from tunebench.gguf_import import import_gguf as run_import

    identity = {"model": model.name, "kind": "import_gguf", "attempt": attempt}
    result = outcomes.record(
        layout.result_in(out), identity, lambda: run_import(model, out), attempts=work / "attempts"
    )
    print(f"import {model.name}: {result['status']} {result['reason']}")
    return result


def prepare_data(dataset: DatasetSpec, out: Path) -> None:
    """Read, clean and split a dataset (a bad row stops here, naming file and line)."""
    import json

    from tunebench.data.prepare import prepare

    manifest = prepare(dataset, out)
    print(json.dumps(manifest["counts"]))


def tokenize(
    model: ModelSpec,
    dataset: DatasetSpec,
    data: Path,
    out: Path,
    model_dir: Path | None = None,
    tokenizer_dir: Path | None = None,
    attempt: str = "",
) -> dict:
    """Tokenise a prepared dataset once per tokenizer. A tokenizer that cannot be loaded is
    recorded in the manifest (`missing_model`), and every run of that model reports it."""
    from tunebench import models, outcomes
    from tunebench.data.tokenize import tokenize_dataset, write_empty_splits

    def work() -> dict:
        if tokenizer_dir and (layout.result_in(tokenizer_dir)).is_file():  # an imported GGUF
            outcomes.require_ok(layout.result_in(tokenizer_dir), f"importing {model.name}")
        location = str(tokenizer_dir) if tokenizer_dir else models.model_location(model, model_dir)
        tokenizer = models.load_tokenizer(model, location)
        return tokenize_dataset(tokenizer, dataset, data, out, location)

    identity = {"dataset": dataset.name, "model": model.name, "attempt": attempt}
    manifest = outcomes.record(out / "manifest.json", identity, work)
    if manifest["status"] != "ok":
        write_empty_splits(out)
    print(f"tokenize {dataset.name} for {model.name}: {manifest['status']} {manifest['reason']}")
    return manifest


def _require_inputs(model: ModelSpec, model_dir: Path | None, tokenized: Path) -> str:
    """The model's location, once the steps before this one are known to have finished."""
    from tunebench import models, outcomes

    if model_dir is not None and (layout.result_in(model_dir)).is_file():
        made = "pre-training" if model.builtin else "importing the GGUF of"
        outcomes.require_ok(layout.result_in(model_dir), f"{made} {model.name}")
    outcomes.require_ok(tokenized / "manifest.json", f"tokenising for {model.name}")
    return models.model_location(model, model_dir)


def train(
    run: RunConfig,
    tokenized: Path,
    run_dir: Path,
    result: Path,
    tracking: Tracking,
    model_dir: Path | None = None,
    attempt: str = "",
    memory_limit_mb: int = 0,
    threads: int = 1,
    predicted_oom_mb: int = 0,
    processes: int = 1,
    strategy: str = "auto",
    cpu_offload: bool = False,
    nodes: int = 1,
    start_from: Path | None = None,
    stop_at_step: int = 0,
) -> dict:
    """Fine-tune one run of the matrix and record its result (a failure is a row).
    stop_at_step: a search's rung (search/halving.py): the same run up to that step, resumed
    from its previous rung's checkpoint, leaving a checkpoint and its validation loss.
    predicted_oom_mb: with resources.predicted_oom: skip, the GPU memory the run must be
    predicted to fit, else it is recorded as `predicted_oom` without training.
    processes, strategy, cpu_offload: how many processes train the run, and how
    (resources.distributed; see training/launch.py); nodes: how many nodes of this Slurm job they
    are spread over (resources.train.nodes); start_from: the folder of the SFT run a dpo/orpo
    run continues (run.start_from), which must have finished."""
    cuda_allocator()
    backend_error = None
    if run.backend == "unsloth":
        try:  # before transformers/TRL/PEFT are imported: Unsloth patches them
            from tunebench.training import unsloth_backend  # noqa: F401
        except Exception as err:  # e.g. no GPU with UNSLOTH_DISABLE_CPU_FALLBACK=1: a failed row
            backend_error = err
    ceiling = _start(threads, memory_limit_mb)
    from tunebench import outcomes
    from tunebench.training.train import check_predicted_fit, train_run

    def work() -> dict:
        if backend_error is not None:
            raise backend_error
        location = _require_inputs(run.model, model_dir, tokenized)
        if start_from is not None:
            outcomes.require_ok(
                layout.train_result_in(start_from),
                f"the SFT run {run.start_from} it starts from",
                status="skipped",
            )
        if predicted_oom_mb:
            from tunebench.estimate import machine_calibration

            calibration = machine_calibration.load_for_run(run_dir)
            check_predicted_fit(run, location, predicted_oom_mb / 1024, calibration, tokenized)
        if processes > 1 or nodes > 1:
            from tunebench.training import launch

            measured = launch.launch(
                run,
                location,
                tokenized,
                run_dir,
                tracking,
                processes,
                threads,
                strategy,
                cpu_offload,
                nodes,
            )
        else:
            measured = train_run(
                run,
                location,
                tokenized,
                run_dir,
                tracking,
                ceiling,
                start_dir=start_from,
                stop_at_step=stop_at_step,
            )
        # Where the base came from: evaluation and `tunebench export` load the same one.
        return measured | {"base_model": location}

    identity = {
        "run_id": run.run_id,
        "config": run.model_dump(mode="json"),
        "axes": run.axes(),
        "seed": run.seed,
        "attempt": attempt,
    }
    recorded = outcomes.record(result, identity, work)
    print(f"{run.run_id}: {recorded['status']} {recorded['reason']}")
    return recorded


def evaluate(
    run: RunConfig,
    train_result: Path,
    run_dir: Path,
    dataset: DatasetSpec,
    data: Path,
    tokenized: Path,
    evaluation: Evaluation,
    result: Path,
    samples: Path,
    model_dir: Path | None = None,
    attempt: str = "",
    memory_limit_mb: int = 0,
    threads: int = 1,
) -> dict:
    """Score a fine-tuned run on the held-out split. `dataset` carries the metrics, which the
    run's own config leaves out (changing a metric re-scores without retraining)."""
    ceiling = _start(threads, memory_limit_mb)
    from tunebench import evaluate as ev
    from tunebench import outcomes

    scored = run.model_copy(update={"dataset": dataset})

    def work() -> tuple[dict, list]:
        outcomes.require_ok(train_result, "training", status="skipped")
        location = _require_inputs(run.model, model_dir, tokenized)
        return ev.evaluate_trained(scored, location, run_dir, data, tokenized, evaluation, ceiling)

    identity = {"run_id": run.run_id, "axes": run.axes(), "kind": "run"}
    return _record_evaluation(identity, attempt, data, result, samples, work)


def evaluate_base(
    model: ModelSpec,
    dataset: DatasetSpec,
    data: Path,
    tokenized: Path,
    evaluation: Evaluation,
    result: Path,
    samples: Path,
    model_dir: Path | None = None,
    attention: str = "sdpa",
    attempt: str = "",
    memory_limit_mb: int = 0,
    threads: int = 1,
) -> dict:
    """Score the untuned base model on the same held-out split: every run's baseline."""
    ceiling = _start(threads, memory_limit_mb)
    from tunebench import evaluate as ev

    def work() -> tuple[dict, list]:
        location = _require_inputs(model, model_dir, tokenized)
        return ev.evaluate_untuned(
            model, dataset, location, data, tokenized, evaluation, attention, ceiling
        )

    identity = {
        "run_id": f"base-{model.name}-{dataset.name}",
        "axes": {"model": model.name, "dataset": dataset.name, "method": "base"},
        "kind": "baseline",
    }
    return _record_evaluation(identity, attempt, data, result, samples, work)


def _record_evaluation(identity, attempt, data, result, samples, work) -> dict:
    """Record scores (a failure is a row) and write the samples beside them (none if failed)."""
    from tunebench import outcomes
    from tunebench.io import read_json, write_jsonl

    scored: list = []

    def scores() -> dict:
        values, examples = work()
        scored.extend(examples)
        return values

    identity = identity | {
        "attempt": attempt,
        "test_sha256": read_json(data / "manifest.json")["test_sha256"],
    }
    recorded = outcomes.record(result, identity, scores)
    write_jsonl(samples, scored)
    print(f"{identity['run_id']}: {recorded['status']} {recorded['reason']}")
    return recorded


def export(
    run_dir: Path,
    out: Path,
    work: Path,
    gguf_types: str = "f16,q8_0",
    check: bool = True,
    attempt: str = "",
) -> dict:
    """Export one run to GGUF (export.runs); a run that did not finish, or a failed check, is
    a recorded failure of this step, and nothing else is written."""
    from tunebench import outcomes
    from tunebench.export.run import RunNotExportable, export_run

    def build() -> dict:
        try:
            manifest = export_run(run_dir, out, gguf_types.split(","), check=check)
        except RunNotExportable as err:  # its training did not finish: nothing to export
            raise outcomes.StageFailure(str(err), status="skipped") from err
        return {"export": manifest["run"]["run_id"], "check": manifest["check"]}

    identity = {"run_id": run_dir.name, "kind": "export", "attempt": attempt}
    result = outcomes.record(layout.result_in(out), identity, build, attempts=work / "attempts")
    print(f"export {run_dir.name}: {result['status']} {result['reason']}")
    return result


def export_best(
    experiment: Experiment,
    dataset: str,
    results: Path,
    out: Path,
    work: Path,
    attempt: str = "",
) -> dict:
    """Export the dataset's best finished run by export.best_by (ties: fewer trainable
    parameters, then run id), recording which it was and the values it was chosen from."""
    from tunebench import outcomes
    from tunebench.export.run import export_run
    from tunebench.io import read_json
    from tunebench.matrix import expand

    spec = experiment.export
    metric = spec.best_by

    def build() -> dict:
        scored = []
        for run in expand(experiment):
            path = results / layout.EVAL_RESULT.format(run_id=run.run_id)
            if run.dataset.name != dataset or not path.is_file():
                continue
            result = read_json(path)
            if result.get("status") == "ok" and result.get(metric) is not None:
                train = read_json(results / layout.TRAIN_RESULT.format(run_id=run.run_id))
                scored.append((-result[metric], train.get("trainable_params", 0), run.run_id))
        if not scored:
            raise outcomes.StageFailure(
                f"no finished run of dataset {dataset!r} has {metric}", status="skipped"
            )
        value, _, best = min(scored)
        run_dir = results / layout.RUN.format(run_id=best)
        manifest = export_run(run_dir, out, spec.types, check=spec.check)
        return {
            "export": best,
            "chosen_by": {"metric": metric, "value": -value, "candidates": len(scored)},
            "check": manifest["check"],
        }

    identity = {"dataset": dataset, "kind": "export_best", "attempt": attempt}
    result = outcomes.record(layout.result_in(out), identity, build, attempts=work / "attempts")
    print(f"export best of {dataset}: {result['status']} {result.get('export', result['reason'])}")
    return result


def compile_report(experiment: Experiment, results: Path, out: Path) -> None:
    """The comparison table and plot, rebuilt from every result file."""
    from tunebench.reporting.report import compile_comparison

    compile_comparison(experiment, results, out)


def promote(experiment: Experiment, rung: int, results: Path, out: Path) -> dict:
    """A search's decision at `rung` (search/halving.py): which configurations that reached it
    go on to the next rung, from the rung results under `results`; written to `out`."""
    from tunebench.io import write_json
    from tunebench.matrix import expand
    from tunebench.search import halving

    decision = halving.decide(experiment, expand(experiment), rung, results)
    write_json(out, decision)
    print(
        f"search at step {decision['step']}: {len(decision['promoted'])} of "
        f"{len(decision['candidates'])} configuration(s) go on to step {decision['next_step']}"
    )
    return decision


def seeds_round(experiment: Experiment, seed_round: int, results: Path, out: Path) -> dict:
    """Adaptive seeds' decision after `seed_round` (search/seeds.py): which configurations, still
    in contention with the best, get one more seed; written to `out`."""
    from tunebench.io import write_json
    from tunebench.search import seeds

    decision = seeds.decide_on_disk(experiment, seed_round, results)
    write_json(out, decision)
    print(
        f"adaptive seeds after round {seed_round}: {len(decision['added_runs'])} of "
        f"{len(decision['configurations'])} configuration(s) get another seed"
    )
    return decision


def train_node(launch: Path) -> None:
    """One node's training processes of a run that spans nodes (srun starts one per node)."""
    from tunebench.training.launch import launch_node

    launch_node(launch)


STAGES = (
    build_tokenizer,
    pretrain,
    import_gguf,
    prepare_data,
    tokenize,
    train,
    promote,
    seeds_round,
    train_node,
    evaluate,
    evaluate_base,
    export,
    export_best,
    compile_report,
)


# ---------------------------------------------------------------- the derived command line


def _boolean(text: str) -> bool:
    """true/false, as a rule writes a Python bool ("True") in any case."""
    if text.lower() not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def _converter(annotation):
    """How to read one option's text as the parameter's type."""
    optional = type(None) in typing.get_args(annotation)
    if isinstance(annotation, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        convert = annotation.model_validate_json
    elif annotation is bool:
        convert = _boolean
    elif annotation in (Path, str, int, float):
        convert = annotation
    else:
        raise TypeError(f"no command-line form for {annotation!r}")
    return (lambda text: None if text == "" else convert(text)) if optional else convert


def add_parsers(subparsers) -> None:
    # No help line: an internal command (the Snakemake rules' door), kept out of the user's
    # list of commands.
    stage = subparsers.add_parser("stage", description="run one workflow step")
    names = stage.add_subparsers(dest="stage", required=True)
    for func in STAGES:
        p = names.add_parser(func.__name__.replace("_", "-"), help=func.__doc__.splitlines()[0])
        hints = typing.get_type_hints(func)
        for param in inspect.signature(func).parameters.values():
            required = param.default is inspect.Parameter.empty
            p.add_argument(
                f"--{param.name.replace('_', '-')}",
                dest=param.name,
                type=_converter(hints[param.name]),
                required=required,
                default=None if required else param.default,
            )
        p.set_defaults(func=lambda args, f=func: _run_stage(f, args))


def _quiet_libraries() -> None:
    from tunebench.redact import protect_output_streams

    protect_output_streams()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def _run_stage(func, args: argparse.Namespace) -> int:
    _quiet_libraries()
    func(**{name: getattr(args, name) for name in inspect.signature(func).parameters})
    return 0
