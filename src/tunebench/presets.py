"""`tunebench reproduce`: the published comparisons under experiments/reproduce/ (presets), and
the two smaller versions of each that run where the full one cannot.

A preset is an ordinary experiment file with a `reference:` block. Run as written it is the full
reproduction (the published models and datasets from the hub). The other two modes rewrite it
into a derived experiment under results/<name>-<mode>/, which then runs like any other:

- resources: the published architecture with random weights (no download) and full-length
  synthetic rows, at the published batch, length and methods, for a few hundred steps: memory
  and speed reproduce on any GPU without hub access; quality is not claimed.
- rehearsal: a tiny model of the same architecture family and the project's fixtures (a handful
  of rows in each hub dataset's real layout, experiments/reproduce/fixtures/<hub id>/), so a CPU
  proves the whole preset end to end: loading, templates, metrics, the reference join, verdicts.
  Its verdicts say "rehearsal: not comparable".

Every change a mode makes is listed in the derived experiment's description.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from tunebench import layout
from tunebench.experiment import load_experiment, read_yaml, validate_data
from tunebench.orchestrate import REPO
from tunebench.spec import Experiment

PRESETS = REPO / "experiments" / "reproduce"
FIXTURES = PRESETS / "fixtures"

# The rehearsal's stand-in: the published family at a size a CPU trains in seconds.
TINY_SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
TINY_VOCAB = 600
REHEARSAL_TRAINING = {"max_steps": 2, "max_length": 256, "batch_size": 2}
REHEARSAL_ROWS = {"test_size": 2, "validation_size": 1}
# GPU-only or CUDA-only settings a CPU rehearsal replaces (the key, what it becomes, why).
CPU_SETTINGS = (
    ("attention", "flash_attention_2", "sdpa", "FlashAttention needs a CUDA GPU"),
    ("torch_compile", True, False, "compiling a tiny model costs more than it saves"),
    ("liger_kernel", True, False, "Liger's kernels are Triton (GPU only)"),
)
RESOURCES_STEPS = 100


class PresetError(ValueError):
    """A preset that does not exist, or a mode it cannot run in; the message says what to do."""


def preset_path(name: str) -> Path:
    """A preset by name (experiments/reproduce/NAME.yaml) or by path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        raise PresetError(
            f"no preset {name!r}; `tunebench reproduce --list` shows them: {', '.join(names())}"
        )
    return path


def names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


# ---------------------------------------------------------------- what each preset needs


def needs(exp: Experiment) -> dict:
    """What running a preset at full scale takes: hub models and datasets, and what the study
    published (its measures and hardware)."""
    return {
        "models": [m.hub or m.path or m.name for m in exp.models],
        "datasets": list(dict.fromkeys(_hub_name(hub) for hub in _hub_sources(exp))),
        "study": exp.reference.study,
        "hardware": exp.reference.hardware,
        "measures": sorted({c.measure for c in exp.reference.cells}),
        "cells": len(exp.reference.cells),
    }


def _hub_name(hub) -> str:
    return hub.id + (f" ({hub.config})" if hub.config else "")


def estimate_gpu(exp: Experiment) -> str:
    """The published GPU when the estimator knows it, else an 80 GB A100."""
    from tunebench.estimate.gpus import find

    try:
        return find(exp.reference.hardware).name
    except KeyError:
        return "A100-80GB"


def estimate_needs(exp: Experiment, gpu_name: str) -> dict:
    """The estimator's predicted peak of each run (by its method label), whether it fits on
    `gpu_name`, and the sum of their hours there (None where a run is given in epochs: the data
    decides)."""
    from tunebench.estimate.gpus import find
    from tunebench.estimate.runs import estimate_experiment
    from tunebench.matrix import expand

    gpu = find(gpu_name)
    runs = expand(exp)
    records = estimate_experiment(exp, runs, [gpu])
    labels = {run.run_id: run.label or run.method for run in runs}
    done = [r for r in records if "error" not in r]
    hours = [r["gpus"][gpu.name]["train_hours"] for r in done]
    return {
        "gpu": gpu.name,
        "peaks_gb": {labels[r["run_id"]]: r["predicted_peak_gb"] for r in done},
        "verdicts": {labels[r["run_id"]]: r["gpus"][gpu.name]["verdict"] for r in done},
        "hours": None if not done or None in hours else sum(hours),
        "errors": [r["error"] for r in records if "error" in r],
    }


# ---------------------------------------------------------------- derived experiments


def derive(preset: Path, mode: str, steps: int = RESOURCES_STEPS, tiny: bool = False) -> Path:
    """Write the `mode` version of a preset (and the models it needs) under
    results/<name>-<mode>/ and return the experiment file to run. Any experiment file works in
    resources mode (its hub models by their known architecture). `tiny`: resources mode at a
    CPU's size (a tiny model of each family, short rows): the plumbing, as benchmarks/gpu_check.py
    --dry tests it."""
    if mode == "full":
        return preset
    settings = copy.deepcopy(read_yaml(preset))
    exp = load_experiment(preset)
    name = f"{exp.name}-{mode}"
    root = layout.results_root(name).resolve()
    made = root / "stand-in"
    if mode == "rehearsal":
        changes = _rehearse(settings, exp, made)
    else:
        changes = _resources(settings, exp, made, steps, tiny)
    settings["name"] = name
    if "reference" in settings:
        settings["reference"]["mode"] = mode
    kind = "preset" if exp.reference is not None else "experiment"
    settings["description"] = (
        f"{mode} of {kind} {exp.name} ({preset}). Changed: " + "; ".join(changes) + "."
    )
    settings.pop("export", None)
    validate_data(settings, f"{mode} of {preset}")  # a broken rewrite fails here, not mid-run
    out = root / "preset.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
    return out


def _rehearse(settings: dict, exp: Experiment, made: Path) -> list[str]:
    changes = []
    texts = _fixture_texts(exp)
    for i, model in enumerate(exp.models):
        folder = made / model.name
        family = _build_model(model, folder, texts, tiny=True)
        settings["models"][i] = {"name": model.name, "path": str(folder)}
        changes.append(
            f"model {model.name}: a random tiny {family}, tokenizer trained on the fixtures"
        )
    for i, data in enumerate(exp.datasets):
        entry = settings["datasets"][i]
        _use_fixtures(entry, data)
        for key, cap in REHEARSAL_ROWS.items():
            if entry.get(key):
                entry[key] = min(entry[key], cap)
        changes.append(f"dataset {data.name}: fixtures instead of the hub")
    training = settings["training"]
    for key, cap in REHEARSAL_TRAINING.items():
        if training.get(key) is not None and training[key] > cap:
            changes.append(f"training.{key} {training[key]} -> {cap}")
            training[key] = cap
    if training.pop("epochs", None) is not None:
        training["max_steps"] = REHEARSAL_TRAINING["max_steps"]
        changes.append(f"training.epochs -> max_steps {training['max_steps']}")
    training.update(gradient_accumulation=1, precision="auto", logging_steps=1)
    training.pop("save_steps", None)
    for key, gpu_value, cpu_value, why in CPU_SETTINGS:
        if training.get(key) == gpu_value:
            training[key] = cpu_value
            changes.append(f"training.{key} {gpu_value} -> {cpu_value} ({why})")
    if any(token in training.get("optimizer", "") for token in ("paged", "8bit")):
        changes.append(f"training.optimizer {training['optimizer']} -> adamw_torch (CUDA only)")
        training["optimizer"] = "adamw_torch"
    for method in settings["methods"]:
        if "quantization" in method:
            # A CPU without native bf16 crawls on bf16 compute (NOTES: 235 s for one step).
            method["quantization"]["compute_dtype"] = "float32"
    evaluation = settings.setdefault("evaluation", {})
    evaluation.update(max_examples=4, batch_size=4, lm_eval=None)
    evaluation["max_new_tokens"] = min(evaluation.get("max_new_tokens", 32), 32)
    settings.pop("resources", None)
    changes.append(
        "no gradient accumulation, precision auto, 4 test examples, up to 32 new tokens, "
        "local CPU resources"
    )
    return changes


def _resources(settings: dict, exp: Experiment, made: Path, steps: int, tiny: bool) -> list[str]:
    changes = []
    training = settings["training"]
    published_steps = training.get("max_steps")
    training["max_steps"] = min(steps, published_steps or steps)
    training.pop("epochs", None)
    changes.append(f"training.max_steps {published_steps or 'epochs'} -> {training['max_steps']}")
    if tiny:
        for key, cap in (("max_length", 64), ("batch_size", 2), ("gradient_accumulation", 1)):
            if training.get(key, 1) > cap:
                changes.append(f"training.{key} {training[key]} -> {cap} (tiny)")
                training[key] = cap
        for key, gpu_value, cpu_value, why in CPU_SETTINGS:
            if training.get(key) == gpu_value:
                training[key] = cpu_value
                changes.append(f"training.{key} {gpu_value} -> {cpu_value} ({why})")
        training["precision"] = "auto"
        for method in settings["methods"]:
            if "quantization" in method:
                method["quantization"]["compute_dtype"] = "float32"
    elif training.get("attention") == "flash_attention_2" and not _has_flash_attn():
        training["attention"] = "sdpa"
        changes.append(
            "training.attention flash_attention_2 -> sdpa (the flash_attn package is not "
            "installed here)"
        )
    # An experiment without hub fixtures (its data is the user's own): the built-in corpus
    # trains the stand-in tokenizer; the rows only need to be max_length tokens long.
    texts = _fixture_texts(exp) or _builtin_texts()
    for i, model in enumerate(exp.models):
        folder = made / model.name
        family = _build_model(model, folder, texts, tiny=tiny)
        settings["models"][i] = {"name": model.name, "path": str(folder)}
        size = "a tiny model of" if tiny else "its"
        changes.append(f"model {model.name}: {size} {family} architecture with random weights")
    rows = training["max_steps"] * training.get("batch_size", 1)
    rows *= training.get("gradient_accumulation", 1)
    # Every stand-in's tokenizer is trained on the same fixtures: any one measures the rows.
    tokenizer_dir = made / exp.models[0].name
    files = _full_length_rows(tokenizer_dir, texts, training["max_length"], rows, made / "data")
    for i, data in enumerate(exp.datasets):
        settings["datasets"][i] = synthetic_dataset(data.name, files, "text")
        changes.append(
            f"dataset {data.name}: {rows} synthetic rows of max_length tokens (memory and "
            "speed at the longest batch; quality not claimed)"
        )
    settings["evaluation"] = {"max_examples": 1, "max_new_tokens": 1}
    settings.pop("report", None)
    return changes


def _has_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def _builtin_texts() -> list[str]:
    from tunebench.builtin import wordops

    return wordops.corpus_lines(wordops.make_lexicon(200, seed=0), seed=0)


def _fixture_texts(exp: Experiment) -> list[str]:
    """Every string in the fixtures the preset's datasets use: the stand-in tokenizer's corpus."""
    from tunebench.data.sources import read_file

    texts = []
    for hub_id in sorted({h.id for h in _hub_sources(exp)}):
        for path in sorted(_fixture(hub_id).rglob("*.json*")):
            for _, row in read_file(path):
                texts += [str(v) for v in row.values()]
    return texts


def _hub_sources(exp: Experiment):
    for data in exp.datasets:
        if data.hub is not None:
            yield data.hub
        for split in ("train", "validation", "test"):
            source = getattr(data.splits, split) if data.splits else None
            if source is not None and source.hub is not None:
                yield source.hub


def _fixture(hub_id: str) -> Path:
    folder = FIXTURES / hub_id
    if not folder.is_dir():
        raise PresetError(
            f"no rehearsal fixture for hub dataset {hub_id!r}: add a few rows in its layout "
            f"under {folder} (see experiments/reproduce/fixtures/)"
        )
    return folder


def _use_fixtures(entry: dict, data) -> None:
    """Point every hub source of a dataset entry at its fixture folder (same config and split:
    the fixture mirrors the hub repository's layout)."""
    sources = [entry["hub"]] if data.hub is not None else []
    if data.splits is not None:
        sources = [s["hub"] for s in entry["splits"].values() if s and "hub" in s]
    for hub in sources:
        hub["id"] = str(_fixture(hub["id"]))
        hub.pop("revision", None)


def _build_model(model, folder: Path, texts: list[str], tiny: bool) -> str:
    """A model folder with random weights: the published architecture (tiny=False) or the same
    family at TINY_SIZES, and a byte-level BPE tokenizer trained on the fixtures. Returns the
    family (model_type)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunebench.builtin.tokenizer import train_tokenizer
    from tunebench.estimate.architectures import config_from_fields

    fields = dict(_architecture(model))
    tokenizer = train_tokenizer(texts, TINY_VOCAB, folder)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if tiny:
        grouped = fields.get("num_key_value_heads", 1) < fields["num_attention_heads"]
        fields.pop("head_dim", None)
        fields.update(TINY_SIZES, vocab_size=len(tokenizer))
        if "num_key_value_heads" in fields:
            fields["num_key_value_heads"] = 2 if grouped else TINY_SIZES["num_attention_heads"]
    config = config_from_fields(**fields, **ids)
    torch.manual_seed(0)
    # Random initialisation of billions of weights takes minutes on a CPU, seconds on a GPU.
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    with torch.device(device):
        built = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32 if tiny else torch.bfloat16
        )
    built.save_pretrained(folder)
    del built
    if device == "cuda":
        torch.cuda.empty_cache()
    return fields["model_type"]


def _architecture(model) -> dict:
    """The published model's configuration fields, from the table of known hub models (offline)
    or the hub's config.json."""
    from tunebench.estimate.architectures import known

    if model.hub in known():
        return known()[model.hub]["fields"]
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model.hub or model.path, revision=model.revision)
    except OSError as err:
        raise PresetError(
            f"model {model.name!r}: its configuration is neither in "
            "src/tunebench/estimate/architectures.csv nor reachable "
            f"({str(err).splitlines()[0]}); add it to the table with its source"
        ) from err
    return config.to_diff_dict() | {"model_type": config.model_type}


def synthetic_dataset(name: str, files: dict, fmt: str) -> dict:
    """A dataset entry for synthetic longest rows in place of an experiment's own (resources
    mode here, the preflight): cut to max_length, and none of the checks meant for real data."""
    return {
        "name": name,
        "files": files,
        "format": fmt,
        "too_long": "truncate",
        "deduplicate": False,
        "leakage": "report",
    }


def _full_length_rows(
    tokenizer_dir: Path, texts: list[str], max_length: int, rows: int, out: Path
) -> dict:
    """Train/test files of plain-text rows each at least `max_length` tokens long (cut to it
    by too_long: truncate): every batch is a longest batch."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    corpus = " ".join(texts)
    per_corpus = max(1, len(tokenizer(corpus)["input_ids"]))
    text = " ".join([corpus] * (max_length // per_corpus + 2))
    # A few tokens over max_length, not the whole corpus: tokenising 100k-token rows took
    # minutes (the H200 check, 2026-12-04) and too_long: truncate cuts them anyway.
    text = tokenizer.decode(tokenizer(text)["input_ids"][: max_length + 16])
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, count in (("train", rows), ("test", 2)):
        # Each row differs in its first word, so no de-duplication or leakage check merges them.
        lines = [json.dumps({"text": f"{split}{n} {text}"}) for n in range(count)]
        path = out / f"{split}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        files[split] = str(path)
    return files
