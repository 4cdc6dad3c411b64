"""Retention scoring inside the evaluation job (retention.py says what is measured): the
built-in models' own held-out sets, and the three kinds of set scored on the loaded model.
"""

from __future__ import annotations

import math
import random
import time

from tunebench import likelihood
from tunebench.retention import (
    MAX_TOKENS,
    SETS_DIR,
    RetentionSetError,
    measure_name,
    read_file,
)

BUILTIN_WORDS = 24  # held-out words each built-in set is made from


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
        logprobs = likelihood.response_logprobs(
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
    loss = likelihood.heldout_loss(model, examples, tokenizer.pad_token_id, batch_size, ceiling)
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
