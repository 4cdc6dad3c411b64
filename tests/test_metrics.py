"""Text-generation metrics, checked against values computed by hand (not against the libraries)."""

from __future__ import annotations

import math

import pytest

from tunebench.metrics import (
    GENERATION_METRICS,
    corpus_scores,
    example_scores,
    extract_answer,
    normalise_text,
)

# --- exact match ---------------------------------------------------------------------------------


def test_normalise_text():
    assert normalise_text("  The\tCat \n\n SAT  ") == "the cat sat"
    assert normalise_text("") == ""


@pytest.mark.parametrize(
    ("prediction", "reference", "strict", "normalised"),
    [
        ("Paris", "Paris", True, True),
        ("  Paris\n", "Paris", True, True),  # surrounding whitespace is ignored by both
        ("paris", "Paris", False, True),
        ("New   York\tCity", "new york city", False, True),
        ("New York.", "New York", False, False),  # punctuation is not normalised away
        ("Paris", "London", False, False),
    ],
)
def test_exact_match_per_example(prediction, reference, strict, normalised):
    scores = example_scores(prediction, reference, ["exact_match", "exact_match_normalised"])
    assert scores == {"exact_match": strict, "exact_match_normalised": normalised}


def test_exact_match_corpus_means():
    preds = ["Paris", "paris", "Rome "]
    refs = ["Paris", "Paris", "Rome"]
    scores = corpus_scores(preds, refs, ["exact_match", "exact_match_normalised"])
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["exact_match_normalised"] == pytest.approx(1.0)


# --- answer extraction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She pays 1,000 + 234.\n#### 1,234", "1234"),
        ("So the answer is 42.", "42"),
        ("The Answer Is: 7", "7"),
        ("I think 3 then 7", "7"),  # last-number fallback
        ("It costs $1,234.00 in total", "1234"),
        ("about 3.50 each", "3.5"),
        ("10.0 metres", "10"),
        ("100 apples", "100"),  # trailing zeros of an integer are kept
        ("it drops to -5 degrees", "-5"),
        ("pages 3-4", "4"),  # a range, not a negative number
        ("items 1,2,3", "3"),  # not thousands grouping
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer_defaults(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_pattern_priority():
    # "####" wins over "the answer is", which wins over the last number; within the winning
    # pattern the last match is taken.
    assert extract_answer("#### 5 then #### 6; the answer is 7; finally 8") == "6"
    assert extract_answer("the answer is 7, no, the answer is 9; check: 8") == "9"


def test_extract_answer_custom_pattern():
    text = "ANSWER: foo ... on reflection ANSWER: bar"
    assert extract_answer(text, r"ANSWER: (\w+)") == "bar"
    assert extract_answer(text, r"RESULT: (\w+)") is None
    # Without a group the whole match is the answer; numbers are still normalised.
    assert extract_answer("x=1 and x=2", r"x=\d") == "x=2"
    assert extract_answer("total: 42.", r"total: (\S+)") == "42"
    assert extract_answer("total: 3.50", r"total: (\S+)") == "3.5"


def test_answer_accuracy_per_example():
    scores = example_scores("so the answer is 1,234.", "steps\n#### 1234", ["answer_accuracy"])
    assert scores == {
        "answer_accuracy": True,
        "predicted_answer": "1234",
        "reference_answer": "1234",
    }
    # No answer on either side is not a match.
    scores = example_scores("no idea", "none", ["answer_accuracy"])
    assert scores == {
        "answer_accuracy": False,
        "predicted_answer": None,
        "reference_answer": None,
    }


@pytest.mark.parametrize(
    ("prediction", "matches"),
    [
        ('{"name": "Ada", "age": 36}', True),  # the reference itself
        ('{\n  "name": "Ada",\n  "age": 36\n}', True),  # pretty-printed
        ('Sure! ```json\n{"age": 36, "name": "Ada"}\n``` Hope it helps', True),  # keys, fence
        ('{"name": "Ada", "age": "36"}', False),  # a string is not the number
        ('{"name": "Ada"}', False),  # a key missing
        ('{"name": "Ada", "age": 36', False),  # unfinished
        ("Ada is 36.", False),  # no JSON at all
        ('[{"name": "Ada", "age": 36}]', False),  # a list around it
    ],
)
def test_json_match(prediction, matches):
    reference = '{"name": "Ada", "age": 36}'
    assert example_scores(prediction, reference, ["json_match"]) == {"json_match": matches}


def test_json_match_needs_json_in_the_reference():
    assert example_scores("{}", "no json here", ["json_match"]) == {"json_match": False}
    assert corpus_scores(["{}", '{"a": 1}'], ["{}", '{"a": 2}'], ["json_match"]) == {
        "json_match": 0.5
    }


def test_answer_accuracy_corpus():
    preds = ["the answer is 12", "first 3, then 5", "#### 8"]
    refs = ["... #### 12", "... #### 5", "... #### 9"]
    assert corpus_scores(preds, refs, ["answer_accuracy"]) == {
        "answer_accuracy": pytest.approx(2 / 3)
    }
    # The custom pattern is applied to both sides.
    preds = ["ANSWER: b", "ANSWER: a ANSWER: c"]
    refs = ["ANSWER: b", "ANSWER: a"]
    scores = corpus_scores(preds, refs, ["answer_accuracy"], answer_pattern=r"ANSWER: (\w)")
    assert scores["answer_accuracy"] == pytest.approx(0.5)


# --- ROUGE-L -------------------------------------------------------------------------------------

# LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat" = 5 tokens,
# both sides have 6 tokens: P = R = 5/6, so F = 5/6.
ROUGE_EQUAL_LEN = ("the cat sat on the mat", "the cat is on the mat", 5 / 6)
# Prediction "a cat sat on a red mat" (7 tokens) vs reference "the cat sat on the mat" (6 tokens):
# LCS = "cat sat on mat" = 4. P = 4/7, R = 4/6 = 2/3,
# F = 2PR / (P + R) = (16/21) / (26/21) = 8/13.
ROUGE_UNEQUAL_LEN = ("a cat sat on a red mat", "the cat sat on the mat", 8 / 13)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"), [ROUGE_EQUAL_LEN, ROUGE_UNEQUAL_LEN]
)
def test_rouge_l_example(prediction, reference, expected):
    scores = example_scores(prediction, reference, ["rouge_l"])
    assert scores == {"rouge_l": pytest.approx(expected)}


def test_rouge_l_corpus_mean():
    preds = [ROUGE_EQUAL_LEN[0], ROUGE_UNEQUAL_LEN[0], "xyz"]
    refs = [ROUGE_EQUAL_LEN[1], ROUGE_UNEQUAL_LEN[1], "the mat"]
    # Third pair shares no token: F = 0.
    expected = (5 / 6 + 8 / 13 + 0.0) / 3
    assert corpus_scores(preds, refs, ["rouge_l"])["rouge_l"] == pytest.approx(expected)


# --- BLEU ----------------------------------------------------------------------------------------


def bleu(preds: list[str], refs: list[str]) -> float:
    return corpus_scores(preds, refs, ["bleu"])["bleu"]


def test_bleu_identical():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)


def test_bleu_all_precisions_nonzero():
    # hyp "the cat sat on a mat" vs ref "the cat sat on the mat" (6 tokens each, so BP = 1):
    #   1-grams: the cat sat on mat match, "a" does not    -> 5/6
    #   2-grams: the-cat cat-sat sat-on | on-a a-mat       -> 3/5
    #   3-grams: the-cat-sat cat-sat-on | sat-on-a on-a-mat -> 2/4
    #   4-grams: the-cat-sat-on | cat-sat-on-a sat-on-a-mat -> 1/3
    # BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 100 * (1/12) ** 0.25 ~= 53.73
    expected = 100 * (1 / 12) ** 0.25
    assert bleu(["the cat sat on a mat"], ["the cat sat on the mat"]) == pytest.approx(expected)


def test_bleu_brevity_penalty():
    # hyp "the cat sat on" is a prefix of the 6-token ref: every precision is 1, and
    # BP = exp(1 - ref_len / hyp_len) = exp(1 - 6/4) = exp(-0.5)  -> BLEU ~= 60.65
    expected = 100 * math.exp(-0.5)
    assert bleu(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(expected)


def test_bleu_no_4gram_overlap_exp_smoothing():
    # hyp "the cat on the mat" (5 tokens) vs ref "the cat sat on the mat" (6 tokens):
    #   1-grams: all 5 match ("the" twice, the ref has it twice) -> 5/5
    #   2-grams: the-cat on-the the-mat | cat-on               -> 3/4
    #   3-grams: on-the-mat | the-cat-on cat-on-the            -> 1/3
    #   4-grams: the-cat-on-the cat-on-the-mat: none match     -> 0/2
    # sacrebleu's default 'exp' smoothing replaces the k-th zero precision by 1 / (2**k * total),
    # here 1 / (2 * 2) = 1/4. BP = exp(1 - 6/5) = exp(-0.2).
    # BLEU = 100 * exp(-0.2) * (1 * 3/4 * 1/3 * 1/4) ** (1/4) = 100 * exp(-0.2) * (1/16) ** 0.25
    #      = 50 * exp(-0.2) ~= 40.94
    expected = 50 * math.exp(-0.2)
    assert bleu(["the cat on the mat"], ["the cat sat on the mat"]) == pytest.approx(expected)


def test_bleu_is_corpus_level():
    # n-gram counts and lengths are pooled over sentences, not averaged: the identical pair and
    # the prefix pair above match every n-gram, so all precisions are 1, and the pooled lengths
    # give BP = exp(1 - (6 + 6) / (6 + 4)) = exp(-0.2), not the mean of 1 and exp(-0.5).
    preds = ["the cat sat on the mat", "the cat sat on"]
    refs = ["the cat sat on the mat", "the cat sat on the mat"]
    assert bleu(preds, refs) == pytest.approx(100 * math.exp(-0.2))


# --- chrF ----------------------------------------------------------------------------------------


def test_chrf_identical_and_disjoint():
    assert corpus_scores(["hello world"], ["hello world"], ["chrf"]) == {
        "chrf": pytest.approx(100.0)
    }
    assert corpus_scores(["abc def"], ["xyz uvw"], ["chrf"]) == {"chrf": pytest.approx(0.0)}


# --- API edges -----------------------------------------------------------------------------------


def test_only_requested_metrics_in_requested_order():
    scores = corpus_scores(["a b"], ["a b"], ["chrf", "exact_match"])
    assert list(scores) == ["chrf", "exact_match"]
    assert example_scores("a", "a", ["exact_match"]) == {"exact_match": True}
    # bleu and chrf are corpus-level only.
    assert example_scores("a", "a", ["bleu", "chrf"]) == {}


def test_all_metrics_perfect_match():
    text = '{"the answer is": 42}'  # JSON, so that json_match has something to match too
    scores = corpus_scores([text], [text], GENERATION_METRICS)
    expected = {name: 100.0 if name in ("bleu", "chrf") else 1.0 for name in GENERATION_METRICS}
    assert scores == pytest.approx(expected)


def test_empty_inputs_score_zero():
    assert corpus_scores([], [], GENERATION_METRICS) == {name: 0.0 for name in GENERATION_METRICS}


@pytest.mark.parametrize("call", [corpus_scores, example_scores])
def test_unknown_metric(call):
    args = (["a"], ["a"]) if call is corpus_scores else ("a", "a")
    with pytest.raises(ValueError, match="meteor"):
        call(*args, ["exact_match", "meteor"])


def test_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        corpus_scores(["a", "b"], ["a"], ["exact_match"])
