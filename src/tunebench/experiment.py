"""Read an experiment file into a validated Experiment, or say exactly what is wrong with it.

Used by the command line and by the workflow (workflow/rules/common.smk), so both reject the
same files with the same messages: a key path (`methods[1].ranks[0]: ...`) or `file:line`.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import ValidationError

from tunebench.matrix import MatrixError, RunConfig, expand
from tunebench.spec import Experiment, key_path

MAX_EXPERIMENT_BYTES = 1_000_000
# Experiment files have no use for many aliases; a "billion laughs" file has thousands.
MAX_YAML_ALIASES = 64


class ExperimentError(ValueError):
    pass


def load_experiment(path: str | Path) -> Experiment:
    """Parse and validate an experiment file; ExperimentError names the key path or line."""
    return validate_data(read_yaml(path), str(path))


def read_yaml(path: str | Path) -> dict:
    """The file's settings as written, refusing what is not a bounded YAML mapping."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_EXPERIMENT_BYTES:
            raise ExperimentError(
                f"{path}: larger than {MAX_EXPERIMENT_BYTES} bytes; not an experiment file"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ExperimentError(f"{path}: no such experiment file") from err
    except UnicodeDecodeError as err:
        raise ExperimentError(
            f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})"
        ) from err
    try:
        aliases = sum(
            isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader)
        )
        if aliases > MAX_YAML_ALIASES:
            raise ExperimentError(
                f"{path}: {aliases} YAML aliases (more than {MAX_YAML_ALIASES}); "
                "refusing a file that expands exponentially"
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ExperimentError(
            f"{where}: YAML syntax error: {getattr(err, 'problem', err)}"
        ) from err
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def validate_data(data: dict, source: str = "experiment") -> Experiment:
    """Validate settings already parsed (a file's, or Snakemake's config)."""
    return validate_matrix(data, source)[0]


def validate_matrix(data: dict, source: str = "experiment") -> tuple[Experiment, list[RunConfig]]:
    """validate_data, and the runs it expands to (expanding is part of validating, and the
    workflow needs both: a 10,000-run matrix is not expanded twice)."""
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as err:
        lines = [f"{key_path(e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ExperimentError(f"{source}: invalid experiment\n  " + "\n  ".join(lines)) from err
    try:
        runs = expand(exp)
        check_search_budget(exp, runs)
        check_paths(exp)
        check_preference_files(exp, runs)
    except MatrixError as err:
        raise ExperimentError(f"{source}: invalid experiment\n  {err}") from err
    return exp, runs


def check_search_budget(exp: Experiment, runs: list[RunConfig]) -> None:
    """search.budget in steps must take every configuration to the first rung (a budget in
    GPU-hours or money needs the estimator: `tunebench plan`, `estimate` and the search's
    first decision check it). Here, not in matrix.py: halving ranks the runs matrix makes."""
    if exp.search is None or exp.search.budget.unit != "steps":
        return
    from tunebench.search import halving

    try:
        halving.plan_for(exp, runs)
    except halving.BudgetTooSmall as err:
        raise MatrixError(err.key, str(err)) from err


def path_fields(exp: Experiment):
    """(key path, value) of every file or folder an experiment names."""
    for i, model in enumerate(exp.models):
        if model.path:
            yield f"models[{i}].path", model.path
        if model.gguf and model.gguf.path:
            yield f"models[{i}].gguf.path", model.gguf.path
    for i, data in enumerate(exp.datasets):
        if data.path:
            yield f"datasets[{i}].path", data.path
        for split in ("train", "validation", "test"):
            value = getattr(data.files, split) if data.files else None
            if value:
                yield f"datasets[{i}].files.{split}", value
            source = getattr(data.splits, split) if data.splits else None
            if source and source.path:
                yield f"datasets[{i}].splits.{split}.path", source.path
    if exp.evaluation.lm_eval and exp.evaluation.lm_eval.include_path:
        yield "evaluation.lm_eval.include_path", exp.evaluation.lm_eval.include_path
    for i, entry in enumerate(exp.evaluation.retention.sets):
        if entry.path:
            yield f"evaluation.retention.sets[{i}].path", entry.path
    harness = exp.evaluation.retention.lm_eval
    if harness and harness.include_path:
        yield "evaluation.retention.lm_eval.include_path", harness.include_path


def check_paths(exp: Experiment, project: Path | None = None) -> None:
    """A relative path must stay inside the project (the directory tunebench runs in); a file
    elsewhere must be named by an absolute path, so that escaping is always deliberate."""
    project = (project or Path.cwd()).resolve()
    for where, value in path_fields(exp):
        if "\x00" in value:
            raise MatrixError(where, "contains a NUL byte")
        path = Path(value)
        if not path.is_absolute() and not (project / path).resolve().is_relative_to(project):
            raise MatrixError(
                where,
                f"{value!r} escapes the project directory {project}; "
                "use an absolute path for a file outside it",
            )


def _train_jsonl(data) -> str | None:
    """The local JSON Lines file a dataset trains on, if it has one."""
    if data.path:
        path = data.path
    elif data.files:
        path = data.files.train
    elif data.splits and data.splits.train.path:
        path = data.splits.train.path
    else:
        return None
    return path if path.lower().endswith(".jsonl") else None


def check_preference_files(exp: Experiment, runs: list[RunConfig]) -> None:
    """A dataset that dpo/orpo runs train on must give preference rows: for a local JSON Lines
    file, its first row is read now, so that a file without `rejected` is refused before
    anything runs (other sources are checked when prepared, and a run on rows without
    `rejected` fails as a row naming the dataset)."""
    from tunebench.data import formats
    from tunebench.data.sources import DataError

    preference = {r.dataset.name for r in runs if r.objective != "sft"}
    for i, data in enumerate(exp.datasets):
        path = _train_jsonl(data) if data.name in preference else None
        if path is None or not Path(path).is_file():
            continue  # a missing file is reported by data preparation, naming it
        with open(path, encoding="utf-8", errors="replace") as lines:
            first = next((line for line in lines if line.strip()), "")
        try:
            record = json.loads(first)
        except ValueError:
            continue  # a bad first line is data preparation's to report, with its line
        try:
            found = formats.detect_format(record, data.columns) if data.format == "auto" else None
        except (DataError, TypeError, AttributeError):
            found = "unknown"
        if found is None and isinstance(record, dict):  # format: preference, maybe with columns
            mapped = {data.columns.get(f, f) for f in ("prompt", "chosen", "rejected")}
            found = "preference" if mapped <= set(record) else "incomplete"
        if found != "preference":
            keys = sorted(record) if isinstance(record, dict) else []
            raise MatrixError(
                f"datasets[{i}]",
                f"dataset {data.name!r} has no preference pairs for objective dpo/orpo: the "
                f"first row of {path} has fields {keys}, not prompt, chosen and rejected "
                "(map yours with columns:, e.g. {rejected: worse_answer})",
            )


def builtin_model_advice(exp: Experiment) -> list[str]:
    """The built-in models know only their own corpus: trained on a user's data their loss falls
    (9.8 -> 2.5 on a few hundred instruction rows) but every generation stays garbage."""
    builtin = [m.name for m in exp.models if m.builtin is not None]
    own = [d.name for d in exp.datasets if d.builtin is None]
    if not (builtin and own):
        return []
    return [
        f"models {', '.join(builtin)} are built-in tiny models that know only their own corpus: "
        f"on datasets {', '.join(own)} the loss falls but generations stay garbage. For your "
        "own data use a real model (docs/real-model.md, 'Your own data on a CPU')."
    ]
