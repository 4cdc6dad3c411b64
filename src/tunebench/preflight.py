"""`tunebench preflight EXPERIMENT`: a few optimizer steps of every distinct training shape of
an experiment, on this machine (or through a profile), on its longest batches, measured beside
the estimator's prediction, before the real run spends hours finding out.

A shape is a run without its learning rate and seed (neither changes memory or speed). The
preflight experiment (results/<name>-preflight/preflight.yaml) is the experiment with:
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
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import yaml

from tunebench import layout
from tunebench.experiment import load_experiment, read_yaml, validate_data
from tunebench.spec import Experiment

STEPS = 3
# One word is at least one token for any tokenizer: this many words per max_length token
# makes every answer pass max_length.
WORDS_PER_TOKEN = 2


def derive(path: Path, steps: int = STEPS) -> tuple[Path, list[str]]:
    """Write the preflight experiment of `path`; returns it and the changes it made."""
    settings = copy.deepcopy(read_yaml(path))
    exp = load_experiment(path)
    name = f"{exp.name}-preflight"
    root = layout.results_root(name).resolve()
    changes = []
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
    out = root / "preflight.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
    return out, changes


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


def train_results(derived: Experiment) -> tuple[list, dict[str, dict]]:
    """The preflight's runs, and the training result of each that has one, by run id."""
    from tunebench.io import read_json
    from tunebench.matrix import expand

    root = layout.results_root(derived.name)
    runs = expand(derived)
    paths = {run.run_id: root / layout.TRAIN_RESULT.format(run_id=run.run_id) for run in runs}
    return runs, {run_id: read_json(path) for run_id, path in paths.items() if path.is_file()}


def rows(runs: list, records: dict[str, dict]) -> list[dict]:
    """Every shape's training result (measured and predicted), or the reason it has none."""
    out = []
    for run in runs:
        record = records.get(run.run_id)
        if record is None:
            out.append({"run_id": run.run_id, "status": "not run", "reason": "no result"})
            continue
        row = record.get("prediction", {}) | record
        if "measured_step_seconds" not in row and row.get("steps") and row.get("train_seconds"):
            row["measured_step_seconds"] = row["train_seconds"] / row["steps"]
        out.append(
            {key: row.get(key) for key, _, _ in COLUMNS} | {"memory": row.get("memory_kind")}
        )
    return out


def write_report(exp: Experiment, derived: Experiment, changes: list[str]) -> tuple[Path, bool]:
    """results/<name>/preflight/preflight.{md,json}; returns the Markdown file and whether every
    shape trained."""
    from tunebench import measure
    from tunebench.estimate import machine_calibration

    runs, records = train_results(derived)
    found = rows(runs, records)
    ok = bool(found) and all(r["status"] == "ok" for r in found)
    root = layout.results_root(exp.name)
    folder = root / layout.PREFLIGHT
    folder.mkdir(parents=True, exist_ok=True)
    machine = measure.hardware().get("accelerator") or measure.machine()
    date = measure.measured_on().split(" on ")[0]
    payload = {"machine": machine, "changes": changes, "ok": ok, "shapes": found}
    (folder / "preflight.json").write_text(json.dumps(payload, indent=1) + "\n")
    # The ratios later estimates of the experiment use, beside the report.
    calibration = machine_calibration.build(runs, records, machine, date)
    machine_calibration.path_in(root).write_text(json.dumps(calibration, indent=1) + "\n")
    lines = [
        f"# Preflight of {exp.name}",
        "",
        f"On {machine}, {date}. Changed for the preflight: "
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
    lines += ["", f"{len(found)} shapes: {verdict}.", "", _calibration_sentence(calibration)]
    out = folder / "preflight.md"
    out.write_text("\n".join(lines) + "\n")
    return out, ok


def _calibration_sentence(calibration: dict) -> str:
    count = len(calibration["shapes"])
    if not count:
        return (
            "Calibration: none. No shape was measured in GPU memory here, so later estimates "
            "stay as counted."
        )
    return (
        f"Calibration: {count} shapes measured in GPU memory. `tunebench estimate` and `plan`, "
        "`resources.train: auto` and `resources.predicted_oom` now scale the estimates of "
        f"those shapes by the measured/predicted ratios ({layout.PREFLIGHT_CALIBRATION}; delete it "
        "to go back to the counted estimate)."
    )


def run(experiment: str, steps: int, profile: str | None) -> int:
    from tunebench import orchestrate

    exp = load_experiment(Path(experiment))
    derived_path, changes = derive(Path(experiment), steps)
    derived = load_experiment(derived_path)
    print(f"preflight: {derived_path}", flush=True)
    # Every run's training result as Snakemake's targets (not `--until train`, which would
    # leave out a run that starts from another's, as DPO does), one job at a time: a shape's
    # step time is its own, not shared with another job's.
    root = layout.results_root(derived.name)
    from tunebench.matrix import expand

    targets = [str(root / layout.TRAIN_RESULT.format(run_id=r.run_id)) for r in expand(derived)]
    if orchestrate.locked_by_another_run(Path.cwd(), []):
        print("error: another tunebench run is working here (.snakemake/locks)", file=sys.stderr)
        return 1
    command = orchestrate.snakemake_command(str(derived_path), profile, ["--cores", "1", *targets])
    print("+ " + " ".join(command), flush=True)
    orchestrate.run_followed(command, derived, str(derived_path))
    report, ok = write_report(exp, derived, changes)
    print(report.read_text())
    print(f"written: {report} and {report.with_suffix('.json')}")
    return 0 if ok else 1
