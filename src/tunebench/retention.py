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

This module imports no torch at import time: spec.py uses its names and readers.
"""

from __future__ import annotations

import json
import math
import random
import time
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
BUILTIN_WORDS = 24  # held-out words each built-in set is made from
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


def _heldout_words(builtin) -> list[str]:
    """Made-up words the built-in model's corpus never contained, drawn as its lexicon was."""
    from tunebench.builtin import wordops

    seen = set(wordops.make_lexicon(builtin.corpus_words, seed=builtin.corpus_seed))
    fresh = wordops.make_lexicon(
        builtin.corpus_words + 4 * BUILTIN_WORDS, seed=-1 - builtin.corpus_seed
    )
    words = [w for w in fresh if w not in seen][:BUILTIN_WORDS]
    return words


def builtin_rows(kind: str, builtin) -> list[dict]:
    """A shipped set's counterpart for a built-in model (its spec.builtin): its pre-training
    prose, its "Repeat the word" pairs, and questions on a word's first letter and length."""
    from tunebench.builtin import wordops

    words = _heldout_words(builtin)
    rng = random.Random(f"retention/{kind}")
    if kind == "text":
        return [
            {
                "text": rng.choice(templates).format(
                    s=wordops.spaced(w), a=wordops.OPERATIONS[op][1](w)
                )
            }
            for w in words
            for op, templates in wordops.CORPUS_TEMPLATES.items()
        ]
    if kind == "instructions":
        return [
            {"prompt": f"Repeat the word {wordops.spaced(w)}.", "response": wordops.spaced(w)}
            for w in words
        ]
    rows = []
    for i, word in enumerate(words):
        if i % 2:  # the length: every length a lexicon word can have (3 to 6 letters)
            choices = [f" {n} letters ." for n in range(3, 7)]
            answer = len(word) - 3
            prompt = f"the word {wordops.spaced(word)} has"
        else:  # the first letter, beside three letters it does not start with
            others = rng.sample([c for c in wordops.LETTERS if c != word[0]], 3)
            letters = [word[0], *others]
            rng.shuffle(letters)
            choices = [f" {c} ." for c in letters]
            answer = letters.index(word[0])
            prompt = f"the word {wordops.spaced(word)} starts with"
        rows.append({"prompt": prompt, "choices": choices, "answer_index": answer})
    return rows


def rows_of(entry, model_spec) -> tuple[list[dict], str]:
    """(rows, kind) of one `evaluation.retention.sets` entry for this model."""
    if entry.path is not None:
        return read_file(entry.path)
    if model_spec.builtin is not None:
        return builtin_rows(entry.name, model_spec.builtin), entry.name
    return read_file(SETS_DIR / f"{entry.name}.jsonl")


def _ids(tokenizer, text: str, limit: int) -> list[int]:
    return tokenizer(text)["input_ids"][:limit]


def text_examples(tokenizer, rows: list[dict], limit: int) -> list[dict]:
    """Every token is scored (the first has nothing before it to be predicted from)."""
    examples = []
    for row in rows:
        ids = _ids(tokenizer, row["text"], limit)
        examples.append({"input_ids": ids, "completion_mask": [1] * len(ids)})
    return examples


def instruction_examples(tokenizer, rows: list[dict], dataset, limit: int) -> list[dict]:
    """Rendered with the dataset's template (the format the run is tuned in); the loss is on
    the response's tokens, as training's mask."""
    from tunebench.data.templates import render

    examples = []
    for row in rows:
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"]},
        ]
        rendered = render(
            {"messages": messages}, tokenizer, dataset.template, dataset.custom_template
        )
        prompt = tokenizer(rendered.prompt, add_special_tokens=False)["input_ids"]
        response = tokenizer(rendered.response, add_special_tokens=False)["input_ids"]
        ids = (prompt + response)[:limit]
        mask = ([0] * len(prompt) + [1] * len(response))[:limit]
        examples.append({"input_ids": ids, "completion_mask": mask})
    return examples


def _fatal(err: BaseException) -> bool:
    """Out of memory stops the evaluation as an oom row; anything else fails only its set."""
    from tunebench.outcomes import StageFailure

    return isinstance(err, MemoryError | StageFailure) or "OutOfMemory" in type(err).__name__


def score_set(model, tokenizer, rows, kind, dataset, batch_size: int, ceiling=None) -> float:
    from tunebench import evaluate

    limit = min(MAX_TOKENS, getattr(model.config, "max_position_embeddings", MAX_TOKENS))
    if kind == "choice":
        # Every choice of every question in one list of batches (evaluate's per-question
        # multiple_choice_accuracy would run a forward pass per question): lm-eval's `acc`.
        pairs, owners = [], []
        for i, row in enumerate(rows):
            prompt = _ids(tokenizer, row["prompt"], limit)
            for choice in row["choices"]:
                pairs.append((prompt, tokenizer(choice, add_special_tokens=False)["input_ids"]))
                owners.append(i)
        logprobs = evaluate.response_logprobs(
            model, pairs, tokenizer.pad_token_id, batch_size, ceiling
        )
        scores: dict[int, list[float]] = {}
        for owner, value in zip(owners, logprobs, strict=True):
            scores.setdefault(owner, []).append(value)
        # The first of equal scores wins, as in evaluate.multiple_choice_accuracy.
        picks = [max(range(len(v)), key=v.__getitem__) for v in scores.values()]
        right = sum(pick == row["answer_index"] for pick, row in zip(picks, rows, strict=True))
        return right / len(rows)
    if kind == "text":
        examples = text_examples(tokenizer, rows, limit)
    else:
        examples = instruction_examples(tokenizer, rows, dataset, limit)
    loss = evaluate.heldout_loss(model, examples, tokenizer.pad_token_id, batch_size, ceiling)
    if not loss["loss_tokens"]:
        raise RetentionSetError("no token to score")
    return loss["loss"]


def score(model, tokenizer, model_spec, dataset, retention, batch_size: int, ceiling=None) -> dict:
    """`retention_*` scores of the loaded model, and retention_seconds. A set that fails is
    left out and named in `reason` (the row's reason): the evaluation itself stands."""
    if not retention.enabled:
        return {}
    started = time.perf_counter()
    scores, failed = {}, []
    for entry in retention.sets:
        try:
            rows, kind = rows_of(entry, model_spec)
            value = score_set(model, tokenizer, rows, kind, dataset, batch_size, ceiling)
            if not math.isfinite(value):
                raise RetentionSetError(f"the score is {value}")
            scores[measure_name(entry.name, kind)] = value
        except Exception as err:  # one set's failure is recorded on the row, not raised
            if _fatal(err):
                raise
            failed.append(f"retention set {entry.name}: {type(err).__name__}: {err}")
    scores["retention_seconds"] = time.perf_counter() - started
    if failed:
        scores["reason"] = "; ".join(failed)
    return scores
