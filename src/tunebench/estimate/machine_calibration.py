"""Per-machine calibration: what `tunebench preflight` measured on this machine, as ratios to the
estimate, for later estimates of the same experiment.

The estimator counts memory from the configuration; a preflight measures it on the machine
itself. Its ratios (measured / predicted peak allocated and reserved GPU memory) are kept per
GPU class and training shape in results/<experiment>/preflight/calibration.json, and
`estimate`, `plan`, `resources.train: auto` and `resources.predicted_oom` multiply the
estimate of a run of that shape by them, and say so (`calibrated_by` in the record).

A GPU class is what Slurm calls it (`resources.train.gpu_model`, an override's, or
`resources.auto.gpus[].slurm`); a preflight on this machine, or of jobs that name no class,
is the class `any`. Which class's ratios a run gets (`choose`): the class its job asks for,
else the one measured on the GPU it runs on, else `any`; a run whose class is not known (an
estimate for no particular job) gets the only class there is, or of several the one with the
largest reserved ratio for its shape (the cautious choice). A job that names a class nobody
measured keeps the counted estimate: another GPU's allocator is no evidence for it.

Only CUDA measurements calibrate: a CPU preflight measures the process's RSS (libraries
included), which is not what the estimate predicts. A shape the preflight did not train keeps
the plain estimate. Step time is not calibrated: a preflight's few steps include the warm-up
step, which would make a ratio say more about start-up than about the step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunebench.estimate import verdict
from tunebench.estimate.memory import GIB

CUDA_MEMORY = "cuda_max_reserved"  # measure.py's memory_kind on a GPU
ANY = "any"  # the class of a preflight on this machine, or of jobs that name no GPU class
# Run fields that change neither memory nor speed, or that a preflight changes on purpose:
# the shape is the rest (model and dataset by name: the preflight swaps unreachable models for
# random weights and every dataset for synthetic longest rows).
NOT_SHAPE = {"learning_rate", "seed", "lr_search", "label", "start_from", "beta", "dropout"}
NOT_SHAPE_TRAINING = {
    "max_steps",
    "epochs",
    "learning_rate",
    "seeds",
    "save_steps",
    "logging_steps",
    "lr_scheduler",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "deterministic",
    "profile_memory",
}


def shape_key(run) -> str:
    """What a run's memory depends on, as a short hash: equal for a run and its preflight."""
    fields = run.model_dump(mode="json", exclude=NOT_SHAPE | {"model", "dataset", "training"})
    fields["model"] = run.model.name
    fields["dataset"] = run.dataset.name
    fields["training"] = run.training.model_dump(mode="json", exclude=NOT_SHAPE_TRAINING)
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build(runs, records: dict[str, dict], machine: str, measured_on: str) -> dict:
    """The calibration of a preflight's `runs` from their train results (`records` by run id):
    the ratios of every shape measured in CUDA memory, and why any other shape has none."""
    shapes, skipped = {}, {}
    for run in runs:
        record = records.get(run.run_id)
        why = _unusable(record)
        if why:
            skipped[run.run_id] = why
            continue
        prediction = record["prediction"]
        shapes[shape_key(run)] = {
            "run_id": run.run_id,
            "allocated": record["peak_memory_allocated_gb"] / prediction["predicted_allocated_gb"],
            "reserved": record["peak_memory_gb"] / prediction["predicted_peak_gb"],
        }
    return {"machine": machine, "measured_on": measured_on, "shapes": shapes, "skipped": skipped}


def _unusable(record: dict | None) -> str:
    if record is None:
        return "no train result"
    if record.get("status") != "ok":
        return f"status {record.get('status')}"
    if record.get("memory_kind") != CUDA_MEMORY:
        return "memory measured as the process's RSS, not GPU memory"
    prediction = record.get("prediction") or {}
    wanted = ("predicted_allocated_gb", "predicted_peak_gb")
    if not all(prediction.get(k) for k in wanted) or not record.get("peak_memory_allocated_gb"):
        return "no prediction or no allocated peak beside the measurement"
    return ""


def path_in(root: Path) -> Path:
    """The calibration file of the experiment whose results root is `root`."""
    from tunebench import layout

    return root / layout.PREFLIGHT_CALIBRATION


def save(root: Path, gpu_class: str, calibration: dict) -> Path:
    """Keep `calibration` (build's) as the class's in the experiment's file, beside the other
    classes' (a preflight of one class leaves the others' measurements alone)."""
    path = path_in(root)
    found = load_from(root) or {"classes": {}}
    classes = found["classes"] | {gpu_class: calibration}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"classes": classes}, indent=1) + "\n")
    return path


def load(exp) -> dict | None:
    """The experiment's calibration, if a preflight wrote one."""
    from tunebench import layout

    return load_from(layout.results_root(exp.name))


def load_for_run(run_dir: Path) -> dict | None:
    """The calibration of the experiment a run folder (layout.RUN) belongs to."""
    from tunebench import layout

    return load_from(run_dir.parents[len(Path(layout.RUN).parts) - 1])


def load_from(root: Path) -> dict | None:
    """The calibration under a results root (an unreadable file: none, the plain estimate)."""
    path = path_in(root)
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(found.get("classes"), dict):
        return None
    return found | {"path": str(path)}


def choose(
    calibration: dict | None, run, gpu_class: str | None = None, device: str | None = None
) -> tuple[str, dict] | None:
    """The class whose ratios apply to `run` (the module docstring says which), and its
    calibration; None when none applies. gpu_class: the class the run's job asks for; device:
    the name of the GPU it runs on (torch.cuda.get_device_name)."""
    if not calibration:
        return None
    classes = {
        name: entry
        for name, entry in calibration["classes"].items()
        if shape_key(run) in entry.get("shapes", {})
    }
    if gpu_class and gpu_class in classes:
        return gpu_class, classes[gpu_class]
    if device:
        on_it = [name for name, entry in classes.items() if entry.get("machine") == device]
        if on_it:
            return on_it[0], classes[on_it[0]]
    if ANY in classes:
        return ANY, classes[ANY]
    if gpu_class or device or not classes:
        return None
    key = shape_key(run)
    name = max(sorted(classes), key=lambda n: classes[n]["shapes"][key]["reserved"])
    return name, classes[name]


def apply(
    record: dict,
    run,
    calibration: dict | None,
    gpus,
    gpu_class: str | None = None,
    device: str | None = None,
) -> dict:
    """`record` (estimate_run's) with its memory scaled by the ratios of the run's shape on the
    class `choose` picks, the verdicts redone, and `calibrated_by` saying from what; unchanged
    without a ratio."""
    if "error" in record:
        return record
    chosen = choose(calibration, run, gpu_class, device)
    if chosen is None:
        return record
    name, measured = chosen
    ratios = measured["shapes"][shape_key(run)]
    allocated = record["predicted_allocated_gb"] * ratios["allocated"]
    reserved = record["predicted_peak_gb"] * ratios["reserved"]
    out = record | {
        "counted_allocated_gb": record["predicted_allocated_gb"],
        "counted_peak_gb": record["predicted_peak_gb"],
        "predicted_allocated_gb": allocated,
        "predicted_peak_gb": reserved,
        "memory_gib": record["memory_gib"]
        | {"peak_allocated": allocated, "peak_reserved": reserved},
        "calibrated_by": (
            f"preflight on {measured['machine']} (GPU class {name}, {measured['measured_on']}, "
            f"{calibration.get('path', 'calibration.json')}): measured/counted allocated "
            f"x{ratios['allocated']:.2f}, reserved x{ratios['reserved']:.2f}"
        ),
        "calibration_class": name,
    }
    out["gpus"] = {
        name: entry | {"verdict": verdict(reserved * GIB, gpu)}
        for (name, entry), gpu in zip(record["gpus"].items(), gpus, strict=True)
    }
    return out
