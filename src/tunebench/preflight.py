"""`tunebench preflight EXPERIMENT`: a few optimizer steps of every distinct training shape of
an experiment, on this machine (or through a profile), on its longest batches, measured beside
the estimator's prediction, before the real run spends hours finding out.

A shape is a run without its learning rate and seed (neither changes memory or speed). The
preflight experiment (results/<name>-preflight/<name>-preflight.yaml) is the experiment with:
- one seed, each method's first learning rate, `--steps` optimizer steps;
- every dataset replaced by synthetic pairs, a short prompt and answers past max_length tokens
  (too_long: truncate), so every batch is a longest batch, for SFT and preference runs alike;
- hub models that cannot be loaded here (no network, nothing cached) replaced by their
  architecture with random weights (as the presets' resources mode does); local models, GGUF
  files and built-in models kept (a built-in one pre-trained for one step: its weights do not
  change the cost).
It runs every run's training through the ordinary workflow, one job at a time (so a run's step
time is its own), and writes results/<name>/preflight/preflight.{md,json}: per shape, the
measured peak allocated and reserved memory (CUDA's; on a CPU the profiler's tensor peak and the
process's peak RSS), step time, tokens/s and MFU beside the prediction, and why a shape failed;
and calibration.json, what a GPU measured as ratios later estimates use. The exit code is 1
when any shape failed.

Through a profile (`--profile slurm`), every GPU class the experiment's training jobs ask for
(resources.train.gpu_model, an override's, resources.auto.gpus[].slurm) gets its own preflight
experiment (results/<name>-preflight-<class>/): each shape whose job asks for that class (under
`train: auto`, every shape on every class auto may choose) trains there as one short job, and
its measurements calibrate that class. A class the Slurm cluster does not have (sinfo's gres)
is an error naming the key before anything is submitted. Jobs that name no class, and a
preflight on this machine, are the class `any`.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import yaml

from tunebench import layout
from tunebench.estimate.machine_calibration import ANY
from tunebench.experiment import ExperimentError, load_experiment, read_yaml, validate_data
from tunebench.spec import Experiment, JobResources

STEPS = 3
# One word is at least one token for any tokenizer: this many words per max_length token
# makes every answer pass max_length.
WORDS_PER_TOKEN = 2


def derive(path: Path, steps: int = STEPS, gpu_class: str = ANY) -> tuple[Path, list[str]]:
    """Write the preflight experiment of `path` (of one GPU class: its jobs' requests are the
    experiment's, and `train: auto` may choose only that class); returns it and the changes it
    made."""
    settings = copy.deepcopy(read_yaml(path))
    exp = load_experiment(path)
    # The stand-in models and synthetic data are the same for every class: made once.
    root = layout.results_root(f"{exp.name}-preflight").resolve()
    name = f"{exp.name}-preflight" + ("" if gpu_class == ANY else f"-{gpu_class}")
    changes = []
    if gpu_class != ANY and exp.resources.train == "auto":
        auto = settings["resources"].setdefault("auto", {})
        auto["gpus"] = [g for g in auto.get("gpus", []) if g["slurm"] == gpu_class]
        changes.append(f"resources.train: auto on GPU class {gpu_class} only")
    training = settings.setdefault("training", {})
    training["max_steps"] = steps
    training.pop("epochs", None)
    training["seeds"] = [exp.training.seed_values[0]]
    training.pop("save_steps", None)
    # On a CPU the profiler's tensor peak is the measurement beside the estimate.
    training["profile_memory"] = True
    changes.append(f"{steps} optimizer steps, seed {exp.training.seed_values[0]} only")
    for method in settings["methods"]:
        if isinstance(method.get("learning_rate"), list):
            method["learning_rate"] = method["learning_rate"][0]
    for i, model in enumerate(exp.models):
        entry = settings["models"][i]
        if model.builtin is not None:
            entry["builtin"]["pretrain_steps"] = 1
            changes.append(f"model {model.name}: pre-trained for 1 step (the cost is the same)")
        elif model.hub is not None and not _loadable(model):
            from tunebench.presets import _build_model, _builtin_texts

            folder = root / "stand-in" / model.name
            family = _build_model(model, folder, _builtin_texts(), tiny=False)
            settings["models"][i] = {"name": model.name, "path": str(folder)}
            changes.append(
                f"model {model.name}: its {family} architecture with random weights (the hub "
                "cannot be reached here)"
            )
    files = _longest_pairs(root / "data", exp.training.max_length, exp.training.batch_size)
    from tunebench.presets import synthetic_dataset

    for i, data in enumerate(exp.datasets):
        settings["datasets"][i] = synthetic_dataset(data.name, files, "preference")
    changes.append("every dataset: synthetic pairs past max_length (every batch a longest batch)")
    settings["name"] = name
    settings["description"] = f"preflight of {exp.name} ({path}): " + "; ".join(changes) + "."
    for key in ("report", "export", "reference"):
        settings.pop(key, None)
    settings["evaluation"] = {"max_examples": 1, "max_new_tokens": 1}
    validate_data(settings, f"preflight of {path}")
    out = root / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
    return out, changes


def gpu_classes(exp: Experiment) -> dict[str, str]:
    """The GPU classes the experiment's training jobs ask for, each with the key that names it
    first ({ANY: ...} when none names one)."""
    res = exp.resources
    named = []
    if isinstance(res.train, JobResources):
        named.append((res.train.gpu_model, "resources.train.gpu_model"))
    else:
        named += [(g.slurm, f"resources.auto.gpus[{i}].slurm") for i, g in enumerate(res.auto.gpus)]
    named += [
        (o.train.gpu_model, f"resources.overrides[{i}].train.gpu_model")
        for i, o in enumerate(res.overrides)
    ]
    found: dict[str, str] = {}
    for gpu_class, key in named:
        if gpu_class:
            found.setdefault(gpu_class, key)
    return found or {ANY: "resources.train (no gpu_model: any GPU)"}


def shapes_of_class(derived: Experiment, gpu_class: str) -> list:
    """The preflight runs whose training job asks for `gpu_class`: under `train: auto`, all
    (derive let auto choose only that class); else those whose request names it (ANY: none)."""
    from tunebench.job_requests import requested_gpu_model
    from tunebench.matrix import expand

    runs = expand(derived)
    if derived.resources.train == "auto" and gpu_class != ANY:
        return runs
    wanted = None if gpu_class == ANY else gpu_class
    return [run for run in runs if requested_gpu_model(derived, run) == wanted]


def slurm_gpu_classes() -> set[str]:
    """The GPU types of the Slurm cluster's nodes (sinfo's gres, `gpu:TYPE:COUNT`)."""
    import re
    import shutil
    import subprocess

    if shutil.which("sinfo") is None:
        raise ExperimentError(
            "--profile slurm: Slurm's sinfo is not on PATH, so the GPU classes cannot be "
            "checked; run the preflight on the cluster's login node"
        )
    out = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise ExperimentError(f"--profile slurm: sinfo failed: {out.stderr.strip()}")
    return set(re.findall(r"gpu:([A-Za-z0-9_.]+):\d", out.stdout))


def check_classes(classes: dict[str, str], known: set[str]) -> None:
    """Every class the experiment asks for is one the cluster has; else an error naming the key."""
    for gpu_class, key in classes.items():
        if gpu_class != ANY and gpu_class not in known:
            have = ", ".join(sorted(known)) or "none (no node has a typed GPU gres)"
            raise ExperimentError(
                f"{key}: GPU class {gpu_class!r} is not on this Slurm cluster (its nodes' GPU "
                f"classes, from sinfo: {have}); name one of those, or leave gpu_model out for "
                "any GPU"
            )


def _loadable(model) -> bool:
    """Whether the hub model's config can be read here (network or cache)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model.hub, revision=model.revision)
        return True
    except OSError:
        return False


def _longest_pairs(folder: Path, max_length: int, batch_size: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    words = " ".join(f"w{n % 97}" for n in range(max_length * WORDS_PER_TOKEN))
    files = {}
    # Enough rows for every step's batch (the trainer cycles through them) and a test split.
    for split, count in (("train", max(batch_size, 2) * 2), ("test", 2)):
        rows = [
            # A short prompt: a prompt past max_length would leave no answer token to train on.
            {"prompt": f"{split} {n}: repeat", "chosen": words, "rejected": f"no {words}"}
            for n in range(count)
        ]
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[split] = str(path)
    return files


# ---------------------------------------------------------------- the report

COLUMNS = (
    ("gpu_class", "GPU class", "{}"),
    ("run_id", "run", "{}"),
    ("status", "status", "{}"),
    ("peak_memory_allocated_gb", "allocated GiB", "{:.3f}"),
    ("predicted_allocated_here_gb", "predicted", "{:.3f}"),
    ("allocated_error_pct", "error %", "{:+.1f}"),
    ("peak_memory_gb", "peak GiB", "{:.2f}"),
    ("predicted_peak_gb", "predicted", "{:.2f}"),
    ("measured_step_seconds", "step s", "{:.3f}"),
    ("predicted_step_seconds", "predicted", "{:.3f}"),
    ("tokens_per_second", "tokens/s", "{:.0f}"),
    ("mfu", "MFU", "{:.3f}"),
    ("reason", "why it failed", "{}"),
)


def train_results(derived: Experiment, runs: list) -> dict[str, dict]:
    """The training result of each of the preflight's `runs` that has one, by run id."""
    from tunebench.io import read_json

    root = layout.results_root(derived.name)
    paths = {run.run_id: root / layout.TRAIN_RESULT.format(run_id=run.run_id) for run in runs}
    return {run_id: read_json(path) for run_id, path in paths.items() if path.is_file()}


def rows(runs: list, records: dict[str, dict], gpu_class: str = ANY) -> list[dict]:
    """Every shape's training result (measured and predicted), or the reason it has none."""
    out = []
    for run in runs:
        record = records.get(run.run_id)
        if record is None:
            out.append(
                {"gpu_class": gpu_class, "run_id": run.run_id, "status": "not run"}
                | {"reason": "no result"}
            )
            continue
        row = record.get("prediction", {}) | record | {"gpu_class": gpu_class}
        if "measured_step_seconds" not in row and row.get("steps") and row.get("train_seconds"):
            row["measured_step_seconds"] = row["train_seconds"] / row["steps"]
        out.append(
            {key: row.get(key) for key, _, _ in COLUMNS} | {"memory": row.get("memory_kind")}
        )
    return out


def _machine_of(records: dict[str, dict]) -> str:
    """The accelerator the class's jobs trained on (from their results), else this machine's."""
    from tunebench import measure

    for record in records.values():
        name = record.get("provenance", {}).get("hardware", {}).get("accelerator")
        if name and name != "cpu":
            return name
    return measure.hardware().get("accelerator") or measure.machine()


def write_report(exp: Experiment, trained: list[tuple], changes: list[str]) -> tuple[Path, bool]:
    """results/<name>/preflight/preflight.{md,json} and each class's calibration from
    `trained`: (GPU class, its preflight experiment, its runs) each; returns the Markdown file
    and whether every shape trained."""
    from tunebench import measure
    from tunebench.estimate import machine_calibration

    root = layout.results_root(exp.name)
    date = measure.measured_on().split(" on ")[0]
    found, classes, calibrations = [], [], {}
    for gpu_class, derived, runs in trained:
        records = train_results(derived, runs)
        machine = _machine_of(records)
        found += rows(runs, records, gpu_class)
        classes.append({"gpu_class": gpu_class, "experiment": derived.name, "machine": machine})
        calibration = machine_calibration.build(runs, records, machine, date)
        machine_calibration.save(root, gpu_class, calibration)
        calibrations[gpu_class] = calibration
    ok = bool(found) and all(r["status"] == "ok" for r in found)
    folder = root / layout.PREFLIGHT
    folder.mkdir(parents=True, exist_ok=True)
    # The column titles travel with the rows: the HTML report reads them without importing this
    # module (which imports the workflow's orchestration, which imports the report).
    columns = [[key, title] for key, title, _ in COLUMNS]
    payload = {
        "classes": classes,
        "changes": changes,
        "ok": ok,
        "shapes": found,
        "columns": columns,
    }
    (folder / "preflight.json").write_text(json.dumps(payload, indent=1) + "\n")
    where = "; ".join(f"GPU class {c['gpu_class']} on {c['machine']}" for c in classes)
    lines = [
        f"# Preflight of {exp.name}",
        "",
        f"{where}, {date}. Changed for the preflight: "
        + "; ".join(changes)
        + ". Memory: CUDA's peak allocated and reserved where a GPU trained; on a CPU, "
        "allocated is the peak of live tensors (torch's profiler, training.profile_memory), "
        "predicted for a CPU's precision, and peak GiB the process's RSS beside the GPU "
        "estimate. Step time includes the first, warm-up step.",
        "",
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + " --- |" * len(COLUMNS),
    ]
    for row in found:
        cells = ["" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append(
            "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |"
        )
    verdict = "every shape trained" if ok else "**some shapes failed: see why**"
    lines += ["", f"{len(found)} shapes: {verdict}.", "", _calibration_sentence(calibrations)]
    out = folder / "preflight.md"
    out.write_text("\n".join(lines) + "\n")
    return out, ok


def _calibration_sentence(calibrations: dict[str, dict]) -> str:
    measured = {c: len(cal["shapes"]) for c, cal in calibrations.items() if cal["shapes"]}
    if not measured:
        return (
            "Calibration: none. No shape was measured in GPU memory here, so later estimates "
            "stay as counted."
        )
    each = ", ".join(f"{count} shapes on GPU class {c}" for c, count in measured.items())
    return (
        f"Calibration: {each} measured in GPU memory. `tunebench estimate` and `plan`, "
        "`resources.train: auto` and `resources.predicted_oom` now scale the estimates of "
        "those shapes by the measured/predicted ratios of the class each job asks for "
        f"({layout.PREFLIGHT_CALIBRATION}; delete it to go back to the counted estimate)."
    )


def run(experiment: str, steps: int, profile: str | None) -> int:
    from tunebench import orchestrate

    exp = load_experiment(Path(experiment))
    classes = {ANY: "this machine"}
    if profile:
        classes = gpu_classes(exp)
        if orchestrate.executor_of(profile, []) == "slurm":
            check_classes(classes, slurm_gpu_classes())
    if orchestrate.locked_by_another_run(Path.cwd(), []):
        print("error: another tunebench run is working here (.snakemake/locks)", file=sys.stderr)
        return 1
    trained, changes = [], []
    for gpu_class in classes:
        derived_path, changes = derive(Path(experiment), steps, gpu_class)
        derived = load_experiment(derived_path)
        runs = expand_for(derived, gpu_class, profile)
        if not runs:
            continue
        print(f"preflight: {derived_path} (GPU class {gpu_class}, {len(runs)} shapes)", flush=True)
        # Every run's training result as Snakemake's targets (not `--until train`, which would
        # leave out a run that starts from another's, as DPO does), one job at a time: a
        # shape's step time is its own, not shared with another job's.
        root = layout.results_root(derived.name)
        targets = [str(root / layout.TRAIN_RESULT.format(run_id=r.run_id)) for r in runs]
        command = orchestrate.snakemake_command(
            str(derived_path), profile, ["--cores", "1", *targets]
        )
        print("+ " + " ".join(command), flush=True)
        orchestrate.run_followed(command, derived, str(derived_path))
        trained.append((gpu_class, derived, runs))
    report, ok = write_report(exp, trained, changes)
    print(report.read_text())
    print(f"written: {report} and {report.with_suffix('.json')}")
    return 0 if ok else 1


def expand_for(derived: Experiment, gpu_class: str, profile: str | None) -> list:
    """The shapes to train for a class: on this machine every one; through a profile those
    whose job asks for the class (shapes_of_class)."""
    from tunebench.matrix import expand

    return shapes_of_class(derived, gpu_class) if profile else expand(derived)
