"""Expand an Experiment into runs with stable ids, and name every artefact by content.

A run id is a readable slug plus a short hash of the resolved run config: the same config gives
the same id on any machine, and changing a hyperparameter gives a new id, so a finished run is
never overwritten by a different one. Models, tokenizers and prepared datasets get content keys
the same way, which is what lets one tokenised dataset serve every run that can share it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from functools import cached_property
from typing import Any

from pydantic import BaseModel

from tunebench.spec import (
    DatasetSpec,
    Experiment,
    FullMethod,
    ModelSpec,
    QLoraMethod,
    Strict,
    Training,
)

# Ids hash only the settings that differ from their defaults, so adding a new setting (with a
# default that keeps the old behaviour) does not orphan existing results. Bump ID_VERSION when
# the meaning of a setting or of a default changes, so old ids are not reused.
ID_VERSION = 1
DEFAULT_ALPHA_RATIO = 2.0
# methods[].beta and methods[].loss_type when a dpo/orpo entry gives none (TRL's defaults).
DEFAULT_BETA = 0.1
DEFAULT_DPO_LOSS = "sigmoid"


# Settings that only change how results are scored or reported, not what is computed before
# scoring: neither hashed into run ids nor passed to a run's jobs.
SCORING_ONLY = {"dataset": {"evaluation"}, "lr_search": True}


def short_hash(payload: Any, n: int = 8, exclude: dict | set | None = None) -> str:
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json", exclude_defaults=True, exclude=exclude)
    data = payload
    text = json.dumps({"v": ID_VERSION, "data": data}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def model_key(model: ModelSpec) -> str:
    return f"{model.name}-{short_hash(model)}"


def dataset_key(dataset: DatasetSpec) -> str:
    return f"{dataset.name}-{short_hash(dataset, exclude={'evaluation'})}"


def tokenizer_key(model: ModelSpec) -> str:
    """Models that share a tokenizer share a key (all built-in models share one per corpus)."""
    if model.builtin is not None:
        b = model.builtin
        spec = {
            "corpus": b.corpus,
            "words": b.corpus_words,
            "seed": b.corpus_seed,
            "vocab": b.vocab_size,
        }
        return f"builtin-{b.corpus}-{short_hash(spec)}"
    return model_key(model)


# The axes shown for each run in `tunebench plan` and the comparison table.
SHOWN_AXES = (
    "model",
    "dataset",
    "method",
    "objective",
    "backend",
    "rank",
    "alpha",
    "quant_type",
    "beta",
    "learning_rate",
    "seed",
)


class RunConfig(Strict):
    """Everything that determines what a training run computes."""

    model: ModelSpec
    dataset: DatasetSpec
    method: str
    # Default hf: hashed only when not hf, so adding the axis kept every existing run id.
    backend: str = "hf"
    label: str | None = None
    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target_modules: str | list[str] | None = None
    quant_type: str | None = None
    double_quant: bool | None = None
    compute_dtype: str | None = None
    # Defaults sft/None: hashed only when set, so adding preference tuning kept every run id.
    objective: str = "sft"
    beta: float | None = None
    loss_type: str | None = None
    # The run id of the SFT run a dpo/orpo run starts from (methods[].start_from): its weights
    # are this run's starting point and DPO reference. Ids hash configs, so this pins it.
    start_from: str | None = None
    learning_rate: float
    seed: int
    training: Training
    # A point of a learning-rate search (methods[].learning_rate: a range): its configuration
    # is reported at the learning rate validation chooses (search.py). Not in the run id
    # (SCORING_ONLY): the same configuration trained alone is the same run.
    lr_search: bool = False

    @cached_property
    def run_id(self) -> str:
        parts = [self.model.name, self.method]
        if self.backend != "hf":
            parts.append(self.backend)
        if self.rank is not None:
            parts.append(f"r{self.rank}")
        if self.quant_type is not None:
            parts.append(self.quant_type)
        if self.objective != "sft":
            parts.append(self.objective)
        if self.label:
            parts.append(self.label)
        parts += [self.dataset.name, f"s{self.seed}"]
        return "-".join(parts) + "-" + short_hash(self, exclude=SCORING_ONLY)

    def model_copy(self, *, update=None, deep=False):
        """A copy whose id is computed afresh: an update may change what the id hashes."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("run_id", None)
        return copy

    def axes(self) -> dict[str, Any]:
        """The flat fields that include/exclude selectors and tables refer to."""
        return {
            "model": self.model.name,
            "dataset": self.dataset.name,
            "method": self.method,
            "backend": self.backend,
            "label": self.label,
            "rank": self.rank,
            "alpha": self.alpha,
            "quant_type": self.quant_type,
            "double_quant": self.double_quant,
            "compute_dtype": self.compute_dtype,
            "objective": self.objective,
            "beta": self.beta,
            "loss_type": self.loss_type,
            "start_from": self.start_from,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
        }


# start_from (a run id, resolved last) is not a selector: select on objective and method.
SELECTOR_KEYS = set(RunConfig.model_fields) - {
    "model",
    "dataset",
    "training",
    "start_from",
    "lr_search",
} | {
    "model",
    "dataset",
}


class MatrixError(ValueError):
    """A problem with include/exclude; `path` names the offending key."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


def _method_variants(method) -> list[dict[str, Any]]:
    """One dict per point of the method's own axes (backend x objective x rank x alpha x quant
    x lr). A dpo/orpo variant's `start_from` is still the entry's name (see _start_from_sft)."""
    return [
        {**variant, **objective, "backend": backend}
        for backend in method.backend
        for objective in _objective_variants(method)
        for variant in _method_variants_one_backend(method)
    ]


def _objective_variants(method) -> list[dict[str, Any]]:
    """One dict per objective of the entry, and for dpo/orpo per beta and loss type."""
    variants = []
    for objective in method.objective:
        if objective == "sft":
            variants.append({"objective": "sft"})
            continue
        losses = (method.loss_type or [DEFAULT_DPO_LOSS]) if objective == "dpo" else [None]
        for beta, loss in itertools.product(method.beta or [DEFAULT_BETA], losses):
            variants.append(
                {
                    "objective": objective,
                    "beta": beta,
                    "loss_type": loss,
                    "start_from": method.start_from,
                }
            )
    return variants


def _learning_rates(method) -> list[dict[str, Any]]:
    """The entry's learning rates: its list (each a configuration of its own), the points of
    its range (one search: validation chooses among them), or None (training.learning_rate)."""
    if method.lr_range is not None:
        return [{"learning_rate": lr, "lr_search": True} for lr in method.lr_range.values()]
    return [{"learning_rate": lr} for lr in method.learning_rate or [None]]


def _method_variants_one_backend(method) -> list[dict[str, Any]]:
    if isinstance(method, FullMethod):
        return [{"method": "full", "label": method.label, **lr} for lr in _learning_rates(method)]
    quant_axes: list[dict[str, Any]] = [{}]
    if isinstance(method, QLoraMethod):
        q = method.quantization
        quant_axes = [
            {"quant_type": t, "double_quant": d, "compute_dtype": c}
            for t, d, c in itertools.product(q.quant_type, q.double_quant, q.compute_dtype)
        ]
    variants = []
    for rank, lr, quant in itertools.product(method.ranks, _learning_rates(method), quant_axes):
        alphas = method.alpha or [r * rank for r in (method.alpha_ratio or [DEFAULT_ALPHA_RATIO])]
        target = method.target_modules
        for alpha in alphas:
            variants.append(
                {
                    "method": method.method,
                    "label": method.label,
                    "rank": rank,
                    "alpha": alpha,
                    "dropout": method.dropout,
                    "target_modules": target,
                    **lr,
                    **quant,
                }
            )
    return variants


def _resolve(exp: Experiment, model: ModelSpec, dataset: DatasetSpec, variant: dict, seed: int):
    variant = dict(variant)
    variant.pop("start_from", None)  # an entry's name until _start_from_sft resolves it
    if variant.get("learning_rate") is None:
        variant["learning_rate"] = exp.training.learning_rate
    training = exp.training.model_copy(update={"seeds": [seed]})
    return RunConfig(model=model, dataset=dataset, seed=seed, training=training, **variant)


def _matches(run: RunConfig, selector: dict[str, Any]) -> bool:
    axes = run.axes()
    return all(axes.get(k) == v for k, v in selector.items())


def _check_selector(where: str, selector: dict[str, Any]) -> None:
    for key in selector:
        if key not in SELECTOR_KEYS:
            raise MatrixError(
                f"{where}.{key}", f"unknown field; use one of {sorted(SELECTOR_KEYS)}"
            )


def expand(exp: Experiment) -> list[RunConfig]:
    """models x methods(axes) x datasets x seeds, minus exclude, plus include; ids unique."""
    # (run, name of the methods entry whose SFT run it starts from, or None)
    runs = [
        (_resolve(exp, model, dataset, variant, seed), variant.get("start_from"))
        for model in exp.models
        for method in exp.methods
        for variant in _method_variants(method)
        for dataset in exp.datasets
        for seed in exp.training.seed_values
    ]
    for i, selector in enumerate(exp.exclude):
        _check_selector(f"exclude[{i}]", selector)
        kept = [(r, start) for r, start in runs if not _matches(r, selector)]
        if len(kept) == len(runs):
            raise MatrixError(f"exclude[{i}]", f"matches no run: {selector}")
        runs = kept
    for i, selector in enumerate(exp.include):
        runs.extend(_included(exp, i, selector))
    runs = _start_from_sft(exp, runs)
    for i, override in enumerate(exp.resources.overrides):
        _check_selector(f"resources.overrides[{i}].match", override.match)
    unique: dict[str, RunConfig] = {}
    for run in runs:  # a run listed alone and in a search is one run: the search's point
        kept = unique.get(run.run_id)
        if kept is None or (run.lr_search and not kept.lr_search):
            unique[run.run_id] = run
    if not unique:
        raise MatrixError("exclude", "the matrix is empty: every run was excluded")
    exported_runs(exp, list(unique.values()))  # checks export.runs and export.best_by
    referenced_runs(exp, list(unique.values()))  # checks reference.cells[].run
    return list(unique.values())


# What a run that starts from an SFT run shares with it: it continues that run's weights.
# (Not dropout: the preference trainers switch dropout off.)
CONTINUED = (
    "backend",
    "rank",
    "alpha",
    "target_modules",
    "quant_type",
    "double_quant",
    "compute_dtype",
    "seed",
)


def _start_from_sft(exp: Experiment, runs: list[tuple[RunConfig, str | None]]) -> list[RunConfig]:
    """Each dpo/orpo run whose entry has start_from gets the id of the SFT run it continues:
    the named entry's SFT run with the same model, dataset, seed and adapter shape (and, if
    that entry sweeps learning rates, the same learning rate)."""
    entries = {m.entry_name: m for m in exp.methods}
    sft = [r for r, _ in runs if r.objective == "sft"]
    resolved = []
    for run, entry_name in runs:
        if entry_name is None:
            resolved.append(run)
            continue
        entry = entries[entry_name]  # the experiment's validator checked the name
        matches = [
            s
            for s in sft
            if (s.method, s.label, s.model.name, s.dataset.name)
            == (entry.method, entry.label, run.model.name, run.dataset.name)
            and all(getattr(s, k) == getattr(run, k) for k in CONTINUED)
        ]
        if len(matches) > 1:
            matches = [s for s in matches if s.learning_rate == run.learning_rate]
        if len(matches) != 1:
            found = "no SFT run" if not matches else f"{len(matches)} SFT runs"
            raise MatrixError(
                f"start_from {entry_name!r}",
                f"{found} of that entry to start run {run.run_id} from (one with the same "
                f"model, dataset, {', '.join(CONTINUED)}); give the entries the same ranks "
                "and settings, one learning rate, and do not exclude the SFT run",
            )
        resolved.append(run.model_copy(update={"start_from": matches[0].run_id}))
    return resolved


def referenced_runs(exp: Experiment, runs: list[RunConfig]) -> list[list[RunConfig]]:
    """The runs each reference cell compares with; each selector must match a run."""
    if exp.reference is None:
        return []
    matched = []
    for i, cell in enumerate(exp.reference.cells):
        _check_selector(f"reference.cells[{i}].run", cell.run)
        matched.append([r for r in runs if _matches(r, cell.run)])
        if not matched[-1]:
            raise MatrixError(f"reference.cells[{i}].run", f"matches no run: {cell.run}")
    return matched


def exported_runs(exp: Experiment, runs: list[RunConfig]) -> list[RunConfig]:
    """The runs export.runs selects; each selector must match a run (like exclude), and
    export.best_by must be a metric of every dataset it picks a best run of."""
    if exp.export is None:
        return []
    chosen: dict[str, RunConfig] = {}
    for i, selector in enumerate(exp.export.runs):
        _check_selector(f"export.runs[{i}]", selector)
        matched = [r for r in runs if _matches(r, selector)]
        if not matched:
            raise MatrixError(f"export.runs[{i}]", f"matches no run: {selector}")
        chosen.update((r.run_id, r) for r in matched)
    metric = exp.export.best_by
    for dataset in exp.datasets:
        if metric and metric not in dataset.evaluation.metrics:
            raise MatrixError(
                "export.best_by",
                f"{metric!r} is not scored on dataset {dataset.name!r} (its metrics: "
                f"{', '.join(dataset.evaluation.metrics)})",
            )
    return list(chosen.values())


def _included(
    exp: Experiment, i: int, selector: dict[str, Any]
) -> list[tuple[RunConfig, str | None]]:
    """An include entry names a model and a method entry (by method and optional label) and
    overrides any of that method's axes, e.g. {model: tiny-s, method: lora, rank: 64}."""
    where = f"include[{i}]"
    _check_selector(where, selector)
    models = {m.name: m for m in exp.models}
    datasets = {d.name: d for d in exp.datasets}
    for key in ("model", "method"):
        if key not in selector:
            raise MatrixError(f"{where}.{key}", "required in an include entry")
    if selector["model"] not in models:
        raise MatrixError(f"{where}.model", f"no model named {selector['model']!r}")
    wanted_label = selector.get("label")
    candidates = [
        m
        for m in exp.methods
        if m.method == selector["method"] and (wanted_label is None or m.label == wanted_label)
    ]
    if not candidates:
        raise MatrixError(
            f"{where}.method",
            f"no methods entry with method={selector['method']!r}"
            + (f" and label={wanted_label!r}" if wanted_label else ""),
        )
    variants = _method_variants(candidates[0])
    if "objective" in selector:  # an include of a dpo run starts from the entry's dpo settings
        variants = [v for v in variants if v["objective"] == selector["objective"]]
        if not variants:
            raise MatrixError(
                f"{where}.objective",
                f"that methods entry has no objective {selector['objective']!r}",
            )
    base = variants[0]
    overrides = {k: v for k, v in selector.items() if k not in ("model", "dataset", "seed")}
    if selector["method"] == "full" and any(k in overrides for k in ("rank", "alpha")):
        raise MatrixError(where, "full fine-tuning has no rank or alpha")
    if "rank" in overrides and "alpha" not in overrides and base.get("rank"):
        overrides["alpha"] = base["alpha"] / base["rank"] * overrides["rank"]
    variant = {**base, **overrides}
    entry_range = candidates[0].lr_range
    if "learning_rate" in overrides:  # one learning rate, not the entry's search
        variant["lr_search"] = False
    # Without a learning rate of its own, an include of an entry with a range is a search too.
    lrs = [variant["learning_rate"]] if not variant.get("lr_search") else entry_range.values()
    if selector.get("dataset") is not None and selector["dataset"] not in datasets:
        raise MatrixError(f"{where}.dataset", f"no dataset named {selector['dataset']!r}")
    chosen = [datasets[selector["dataset"]]] if "dataset" in selector else exp.datasets
    seeds = [selector["seed"]] if "seed" in selector else exp.training.seed_values
    try:
        return [
            (
                _resolve(exp, models[selector["model"]], d, variant | {"learning_rate": lr}, s),
                variant.get("start_from"),
            )
            for lr in lrs
            for d in chosen
            for s in seeds
        ]
    except ValueError as err:
        raise MatrixError(where, str(err).splitlines()[0]) from err


def baselines(
    exp: Experiment, runs: list[RunConfig] | None = None
) -> list[tuple[ModelSpec, DatasetSpec]]:
    """One untuned baseline per (model, dataset) that the matrix (`runs`, if expanded
    already) trains on."""
    seen: dict[tuple[str, str], tuple[ModelSpec, DatasetSpec]] = {}
    for run in expand(exp) if runs is None else runs:
        seen.setdefault((run.model.name, run.dataset.name), (run.model, run.dataset))
    return list(seen.values())
