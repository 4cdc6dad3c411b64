"""Text-generation metrics for held-out evaluation: exact match (strict and normalised), answer
accuracy on extracted final answers, JSON match (the same data in any layout), ROUGE-L, and
corpus BLEU/chrF from sacrebleu.

`example_scores` gives the per-example values written to the samples file; `corpus_scores` gives
the aggregate values written to the result file."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cache

# Scored on greedy generations against the reference (this module).
GENERATION_METRICS = (
    "exact_match",
    "exact_match_normalised",
    "answer_accuracy",
    "json_match",
    "rouge_l",
    "bleu",
    "chrf",
)
# Scored by log-likelihood of each choice (evaluate.multiple_choice_accuracy).
CHOICE_METRIC = "multiple_choice_accuracy"
# Every metric a dataset can ask for (datasets[].evaluation.metrics), in table order.
METRIC_NAMES = (*GENERATION_METRICS, CHOICE_METRIC)
# Scored on every row whenever the test split holds preference pairs (evaluate.preference_scores).
PREFERENCE_METRICS = ("preference_accuracy", "preference_margin")

# A number as it appears in model output: optional sign and '$', either comma-grouped thousands
# ("1,234") or plain digits, optional decimals. Strict thousands grouping keeps a list such as
# "1,2,3" from being read as 123. The sign is only taken when not glued to a word or digit, so
# the range "3-4" yields 3 and 4, not -4.
_NUMBER = r"(?:(?<![\w.])-)?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"

# Tried in order; the first pattern with any match wins. Explicit answer markers come before the
# last-number fallback, since reasoning text is full of intermediate numbers.
DEFAULT_ANSWER_PATTERNS: tuple[str, ...] = (
    rf"####\s*({_NUMBER})",  # GSM8K solutions end with "#### <answer>"
    rf"(?i:the answer is)\s*:?\s*({_NUMBER})",
    rf"({_NUMBER})",
)

_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def normalise_text(text: str) -> str:
    """Lower-case, collapse every whitespace run to one space, strip. Deliberately no more (no
    punctuation or article removal), so normalised exact match stays easy to reason about."""
    return " ".join(text.lower().split())


def _normalise_answer(answer: str) -> str:
    """Canonical form of a numeric answer ("$1,234.00" -> "1234", "42." -> "42", "3.50" -> "3.5"),
    so equal values written differently compare equal. Non-numeric answers are only stripped."""
    answer = answer.strip()
    number = answer.replace(",", "").replace("$", "").rstrip(".")
    if not _PLAIN_NUMBER.fullmatch(number):
        return answer
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number


def _last_match(pattern: str, text: str) -> str | None:
    # The last match, because solutions state the final answer last (GSM8K's "####" line, or a
    # closing "the answer is"); earlier matches are usually intermediate steps.
    found = None
    for match in re.finditer(pattern, text):
        value = match.group(1) if match.re.groups else match.group(0)
        if value is not None:
            found = value
    return found


def extract_answer(text: str, pattern: str | None = None) -> str | None:
    """The final answer in `text`, normalised, or None if nothing matches.

    With `pattern` (a regex; its first capture group, or the whole match if it has none) the last
    match is used. Without it, DEFAULT_ANSWER_PATTERNS are tried in order and the first pattern
    that matches at all wins, again taking its last match."""
    for candidate in (pattern,) if pattern is not None else DEFAULT_ANSWER_PATTERNS:
        found = _last_match(candidate, text)
        if found is not None:
            return _normalise_answer(found)
    return None


def first_json(text: str):
    """The first JSON object or array in `text` (after any prose or code fence), or None."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                return decoder.raw_decode(text, start)[0]
            except ValueError:
                continue
    return None


def _json_match(prediction: str, reference: str) -> bool:
    # The same data whatever the layout (indentation, spacing, a code fence around it): a
    # content score beside exact match, which also demands the reference's exact form.
    expected = first_json(reference)
    return expected is not None and first_json(prediction) == expected


def _check_metrics(metrics: Sequence[str]) -> None:
    for name in metrics:
        if name not in GENERATION_METRICS:
            raise ValueError(
                f"unknown metric {name!r}; known metrics: {', '.join(GENERATION_METRICS)}"
            )


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer  # imported lazily: only needed when rouge_l is requested

    # No stemming: scores stay comparable to most reported ROUGE-L numbers for generation.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _rouge_l(prediction: str, reference: str) -> float:
    # rouge_score tokenises by lower-casing and keeping only [a-z0-9] runs.
    return _rouge_scorer().score(target=reference, prediction=prediction)["rougeL"].fmeasure


def example_scores(
    prediction: str,
    reference: str,
    metrics: Sequence[str],
    answer_pattern: str | None = None,
) -> dict[str, float | bool | str | None]:
    """Per-example values of the requested metrics, for the samples file.

    exact_match, exact_match_normalised, answer_accuracy and json_match are bools;
    answer_accuracy also adds
    "predicted_answer" and "reference_answer" (None when nothing was extracted). rouge_l is the
    example's F-measure. bleu and chrf are corpus-level only and are left out here: sentence-level
    values are not what `corpus_scores` reports and would mislead."""
    _check_metrics(metrics)
    scores: dict[str, float | bool | str | None] = {}
    if "exact_match" in metrics:
        scores["exact_match"] = prediction.strip() == reference.strip()
    if "exact_match_normalised" in metrics:
        scores["exact_match_normalised"] = normalise_text(prediction) == normalise_text(reference)
    if "answer_accuracy" in metrics:
        predicted = extract_answer(prediction, answer_pattern)
        expected = extract_answer(reference, answer_pattern)
        # Two missing answers are not a match: the reference must yield an answer to be scored.
        scores["answer_accuracy"] = predicted is not None and predicted == expected
        scores["predicted_answer"] = predicted
        scores["reference_answer"] = expected
    if "json_match" in metrics:
        scores["json_match"] = _json_match(prediction, reference)
    if "rouge_l" in metrics:
        scores["rouge_l"] = _rouge_l(prediction, reference)
    return scores


def corpus_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    metrics: Sequence[str],
    answer_pattern: str | None = None,
) -> dict[str, float]:
    """Aggregate values of the requested metrics over paired predictions and references.

    exact_match, exact_match_normalised, answer_accuracy, json_match and rouge_l (F-measure) are
    means in [0, 1]; bleu and chrf are sacrebleu's corpus scores on its 0-100 scale, with its
    defaults.
    Empty inputs give 0.0 for every requested metric (there is nothing to average, and a number
    keeps result tables uniform). Raises ValueError for an unknown metric or unequal lengths."""
    _check_metrics(metrics)
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; they must pair up"
        )
    if not predictions:
        return {name: 0.0 for name in metrics}

    scores: dict[str, float] = {}
    per_example = [
        example_scores(p, r, metrics, answer_pattern)
        for p, r in zip(predictions, references, strict=True)
    ]
    for name in (
        "exact_match",
        "exact_match_normalised",
        "answer_accuracy",
        "json_match",
        "rouge_l",
    ):
        if name in metrics:
            scores[name] = sum(float(ex[name]) for ex in per_example) / len(per_example)
    if "bleu" in metrics or "chrf" in metrics:
        from sacrebleu.metrics import BLEU, CHRF  # imported lazily, like rouge_score

        hyps, refs = list(predictions), [list(references)]  # one reference stream
        if "bleu" in metrics:
            scores["bleu"] = BLEU().corpus_score(hyps, refs).score
        if "chrf" in metrics:
            scores["chrf"] = CHRF().corpus_score(hyps, refs).score
    # Keep the caller's metric order.
    return {name: scores[name] for name in metrics}
