"""Estimates for the runs of an experiment: what `tunebench estimate`, `tunebench plan`, the
train stage (prediction beside measurement) and `resources.train: auto` use.

Each run becomes one flat record (GiB, seconds, hours, money) so that the CLI, JSON output and
result files share one shape.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tunebench.estimate import EstimateError, estimate, machine_calibration, verdict
from tunebench.estimate.gpus import Gpu, find
from tunebench.estimate.memory import GIB
from tunebench.estimate.setup import from_run, spec_config
from tunebench.estimate.speed import flops_per_token, mfu
from tunebench.measure import price_per_hour

# Compared when the experiment names no GPU: the common memory classes, 24 / 48 / 80 GB.
DEFAULT_GPUS = ("RTX-4090", "L40S", "A100-80GB", "H100")


def experiment_gpus(exp, names: list[str] | None = None) -> list[Gpu]:
    """GPUs to estimate for: those named, else the experiment's (resources.auto.gpus, or
    resources.train.gpu_model when it is one the estimator knows) and the defaults."""
    if names:
        return [find(n) for n in names]
    gpus = []
    if exp.resources.train == "auto":
        gpus = [find(c.gpu) for c in exp.resources.auto.gpus]
    model = getattr(exp.resources.train, "gpu_model", None)
    if model:
        with contextlib.suppress(KeyError):  # a cluster's own name: only the defaults then
            gpus.append(find(model))
    return gpus + [find(n) for n in DEFAULT_GPUS if all(g.name != n for g in gpus)]


def train_steps(run) -> int | None:
    """Optimizer steps of the run; None when it is given in epochs (the data decides)."""
    return run.training.max_steps


def estimate_run(
    run,
    config,
    gpus: list[Gpu],
    prices: dict[str, float] | None = None,
    device: str = "cuda",
    longest: int | None = None,
) -> dict:
    """One run's estimate as a flat record (see the module docstring), as it would train on
    `device` (a CPU trains in float32 where a GPU would use bf16), its batches no longer than
    `longest` tokens where the tokenised data says so (setup.from_run)."""
    setup = from_run(run, device, longest)
    result = estimate(config, setup, gpus)
    record = {
        "run_id": run.run_id,
        "seq_len": setup.seq_len,
        "compute_dtype": setup.compute_dtype,
        "model_flops_per_token": flops_per_token(setup, result.footprint, config)[0],
        "trainable_params": result.footprint.trainable_params,
        "total_params": result.footprint.total_params,
        "memory_gib": result.memory.gib(),
        "predicted_peak_gb": result.memory.peak_reserved / GIB,
        "predicted_allocated_gb": result.memory.peak_allocated / GIB,
        "gpus": {},
    }
    for gpu in gpus:
        speed = result.speeds[gpu.name]
        entry = {
            "verdict": result.verdicts[gpu.name],
            "memory_gib": gpu.memory_gib,
            "step_seconds": speed.step_seconds,
            "tokens_per_second": speed.tokens_per_second,
            "train_hours": speed.train_hours,
            "mfu": speed.mfu,
        }
        price = price_per_hour(prices or {}, gpu.name)
        if speed.train_hours is not None and price is not None:
            entry["cost"] = speed.train_hours * price
        record["gpus"][gpu.name] = entry
    return record


def config_at(run, model_location: str):
    """The configuration of the base model a run starts from, read where the step found it
    (a folder, or the hub's config.json): its weights are not read."""
    from transformers import AutoConfig

    from tunebench import models

    return AutoConfig.from_pretrained(model_location, **models.hub_kwargs(run.model))


def estimate_at(
    run,
    model_location: str,
    gpus: list[Gpu] | None = None,
    calibration: dict | None = None,
    device: str = "cuda",
    gpu_name: str | None = None,
    tokenized: Path | None = None,
) -> dict:
    """estimate_run for a run whose base model a step has found at `model_location` (the train
    stage's prediction beside measurement and its predicted_oom check, the launcher's auto
    strategy); scaled by a preflight's `calibration` when given (machine_calibration), of the
    GPU class measured on `gpu_name`, the GPU the step runs on, where there is one; for the
    longest batch of the data tokenised in `tokenized`, when given."""
    gpus = gpus or []
    longest = longest_train_tokens(tokenized) if tokenized else None
    record = estimate_run(run, config_at(run, model_location), gpus, device=device, longest=longest)
    return machine_calibration.apply(record, run, calibration, gpus, device=gpu_name)


def longest_train_tokens(tokenized: Path) -> int | None:
    """The longest tokenised training example (the tokenize step's manifest); None before the
    data are tokenised."""
    from tunebench.io import read_json

    try:
        return int(read_json(tokenized / "manifest.json")["splits"]["train"]["max_tokens"]) or None
    except (OSError, KeyError, TypeError, ValueError):
        return None


def tokenized_dir(exp, run) -> Path:
    """Where the workflow tokenises a run's data for its model (as workflow/rules/common.smk)."""
    from tunebench import layout
    from tunebench.matrix import dataset_key, tokenizer_key

    return layout.results_root(exp.name) / layout.TOKENIZED.format(
        dataset=dataset_key(run.dataset), tokenizer=tokenizer_key(run.model)
    )


def made_model_dir(exp, model) -> Path | None:
    """The folder the workflow made for a GGUF model (its config.json), if it exists yet."""
    from tunebench import layout
    from tunebench.matrix import model_key

    folder = layout.results_root(exp.name) / layout.IMPORTED_MODEL.format(model=model_key(model))
    return folder if (folder / "config.json").is_file() else None


def estimate_experiment(exp, runs, gpus: list[Gpu], calibrated: bool = True) -> list[dict]:
    """Every run's record; a run whose model or settings cannot be estimated gets an `error`.
    A preflight of the experiment calibrates the runs of the shapes it trained, with the ratios
    of the GPU class each run's job asks for (`calibrated_by` says so); calibrated=False: as
    counted."""
    from tunebench.job_requests import requested_gpu_model

    calibration = machine_calibration.load(exp) if calibrated else None
    configs: dict[str, tuple] = {}
    longest_of: dict[Path, int | None] = {}
    records = []
    for run in runs:
        try:
            if run.model.name not in configs:
                configs[run.model.name] = spec_config(run.model, made_model_dir(exp, run.model))
            config, source = configs[run.model.name]
            folder = tokenized_dir(exp, run)
            if folder not in longest_of:  # one manifest per dataset and tokenizer, not per run
                longest_of[folder] = longest_train_tokens(folder)
            longest = longest_of[folder]
            record = estimate_run(run, config, gpus, exp.cost.price_per_hour, longest=longest)
            if calibration:
                record = machine_calibration.apply(
                    record, run, calibration, gpus, requested_gpu_model(exp, run)
                )
            records.append(record | {"config_source": source})
        except (EstimateError, OSError, ValueError) as err:
            records.append({"run_id": run.run_id, "error": str(err).splitlines()[0]})
    return records


def measured_against(prediction: dict, measured: dict, gpu_name: str | None) -> dict:
    """Prediction beside measurement for a finished run on `gpu_name` (None on a CPU, where
    GPU memory is not measured): errors of peak memory and step time, and MFU."""
    out = {
        "predicted_peak_gb": prediction["predicted_peak_gb"],
        "predicted_allocated_gb": prediction["predicted_allocated_gb"],
    }
    if gpu_name is None:
        return out | {"mfu": None}
    if measured.get("peak_memory_allocated_gb"):
        out |= allocated_against(
            prediction["predicted_allocated_gb"], measured["peak_memory_allocated_gb"]
        )
    peak = measured.get("peak_memory_gb")
    if peak:
        out["predicted_peak_error_pct"] = 100 * (prediction["predicted_peak_gb"] - peak) / peak
    try:
        gpu = find(gpu_name)
    except KeyError:
        return out
    entry = prediction["gpus"].get(gpu.name, {})
    steps, seconds = measured.get("steps"), measured.get("train_seconds")
    if entry.get("step_seconds") and steps and seconds:
        out["predicted_step_seconds"] = entry["step_seconds"]
        out["measured_step_seconds"] = seconds / steps
    rate = measured.get("tokens_per_second")
    if rate and prediction.get("model_flops_per_token"):
        out["mfu"] = mfu(
            prediction["model_flops_per_token"], rate, gpu, prediction["compute_dtype"]
        )
    return out


def allocated_against(predicted_gb: float, measured_gb: float) -> dict:
    """The estimate of peak allocated memory for the device a run trained on, and its error
    against the measured peak of allocated tensors (CUDA's counter, or a CPU's profiler)."""
    return {
        "predicted_allocated_here_gb": predicted_gb,
        "allocated_error_pct": 100 * (predicted_gb - measured_gb) / measured_gb,
    }


__all__ = [
    "allocated_against",
    "DEFAULT_GPUS",
    "estimate_experiment",
    "estimate_run",
    "experiment_gpus",
    "measured_against",
    "verdict",
]
