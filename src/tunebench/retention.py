"""Retention: what fine-tuning broke. Every run and every untuned model is scored, inside its
evaluation job (the model is already loaded), on general held-out sets unrelated to the task:
general text (mean loss per token), general instruction/response pairs (mean loss per response
token) and general multiple-choice questions (the most likely choice, as lm-eval's `acc`). Their
scores are ordinary metrics named `retention_*`, so the table's delta_*_vs_base columns are the
forgetting, with intervals over seeds.

The shipped sets are in retention_sets/ (sources and licences in its README.md). A built-in
model never saw English, so for it the same names are its own pre-training text and formats
(builtin/wordops.py) on made-up words its corpus never contained. A file of the user's own
(`evaluation.retention.sets[].path`) is JSON Lines of one of the three kinds.

This module holds the sets' names, kinds and readers, which the experiment's schema (spec.py)
uses; the scoring that runs in the evaluation job is retention_scoring.py (apart, so that the
schema does not import the evaluation code that imports the schema).
"""

from __future__ import annotations

import json
from pathlib import Path

SETS_DIR = Path(__file__).with_name("retention_sets")
# The shipped sets, by name; each name is also a kind of set.
SHIPPED = ("text", "instructions", "choice")
# The fields that make a row of each kind (a file's rows must all be of one kind).
FIELDS = {
    "text": ("text",),
    "instructions": ("prompt", "response"),
    "choice": ("prompt", "choices", "answer_index"),
}
# Tokens of one row that are scored at most: the sets are about breadth, not long context,
# and the cap keeps them cheap (the built-in models take 256 positions).
MAX_TOKENS = 256
MAX_FILE_BYTES = 20_000_000


class RetentionSetError(ValueError):
    """A retention set that cannot be read, or whose rows are not of one known kind."""


def kind_of(row: dict) -> str:
    """The kind of one row, from its fields (choice before instructions: both have prompt)."""
    if not isinstance(row, dict):
        raise RetentionSetError(f"a row is {type(row).__name__}, not an object")
    for kind in ("choice", "instructions", "text"):
        if all(f in row for f in FIELDS[kind]):
            return kind
    raise RetentionSetError(
        f"a row with fields {sorted(row)} is none of: text; prompt + response; "
        "prompt + choices + answer_index"
    )


def _check(row: dict, kind: str) -> None:
    if kind == "choice":
        choices, answer = row["choices"], row["answer_index"]
        if not (isinstance(choices, list) and len(choices) >= 2):
            raise RetentionSetError("choices must be a list of two or more strings")
        if not (isinstance(answer, int) and 0 <= answer < len(choices)):
            raise RetentionSetError(f"answer_index {answer!r} is not an index of choices")
    for name in FIELDS[kind]:
        value = row[name]
        texts = value if name == "choices" else [value] if name != "answer_index" else []
        if not all(isinstance(t, str) and t for t in texts):
            raise RetentionSetError(f"{name} must be non-empty text")


def read_file(path: str | Path) -> tuple[list[dict], str]:
    """(rows, kind) of a JSON Lines retention set; RetentionSetError says what is wrong."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise RetentionSetError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise RetentionSetError(f"{path}: no such file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise RetentionSetError(f"{path}: cannot be read ({err})") from err
    rows, kinds = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            kind = kind_of(row)
            _check(row, kind)
        except (ValueError, TypeError) as err:
            raise RetentionSetError(f"{path}:{number}: {err}") from err
        rows.append(row)
        kinds.add(kind)
    if not rows:
        raise RetentionSetError(f"{path}: no rows")
    if len(kinds) > 1:
        raise RetentionSetError(f"{path}: rows of several kinds ({sorted(kinds)}); give one")
    return rows, kinds.pop()


def measure_name(name: str, kind: str) -> str:
    """The table's column of a set: retention_<name>_loss, or _accuracy for choices."""
    return f"retention_{name}_{'accuracy' if kind == 'choice' else 'loss'}"


def lower_is_better(measure: str) -> bool:
    return measure.endswith("_loss")


def forgetting(delta: float, measure: str) -> float:
    """How much a configuration forgot, from its delta vs the untuned model: a loss's rise, an
    accuracy's fall (negative: it improved)."""
    return delta if lower_is_better(measure) else -delta


def measures(retention) -> dict[str, str]:
    """measure -> kind of every set an `evaluation.retention` scores (none when off)."""
    if not retention.enabled:
        return {}
    out = {}
    for entry in retention.sets:
        kind = entry.name if entry.path is None else read_file(entry.path)[1]
        out[measure_name(entry.name, kind)] = kind
    return out
