"""The built-in `wordops` world: a general corpus for pre-training and an instruction task.

Both are generated from the same seeded lexicon of made-up words. Pre-training prose states the
letter-level facts of each word in several phrasings ("the word k a t o backwards is o t a k").
The instruction task asks the same facts in an instruction/response format that never occurs in
the corpus ("Reverse the letters: k a t o" -> "o t a k"). So an untuned base model knows the
skill but not the format, and fine-tuning has something real to unlock: the honest small-scale
analogue of instruction-tuning a pre-trained LLM. Test words are held out of the instruction
training set (but, like real pre-training data, they appear in the corpus).

Letters are written space-separated so every letter is one token for any byte-level tokenizer.
"""

from __future__ import annotations

import random

LETTERS = "abcdefghijklmnopqrstuvwxyz"
CONSONANTS = "bcdfghjklmnprstvz"
VOWELS = "aeiou"

# Operations of the instruction task: name -> (instruction text, answer function).
# The instructions share words with the corpus ("backwards", "start", ...) the way real
# instructions share vocabulary with real pre-training text.
OPERATIONS = {
    "reverse": ("Write the word {s} backwards.", lambda w: " ".join(reversed(w))),
    "first": ("Which letter does the word {s} start with?", lambda w: w[0]),
    "last": ("Which letter does the word {s} end with?", lambda w: w[-1]),
    "count": ("How many letters does the word {s} have?", lambda w: str(len(w))),
}

# Prose that states the same facts for pre-training (several phrasings per fact).
CORPUS_TEMPLATES = {
    "reverse": [
        "the word {s} backwards is {a} .",
        "read from the end , {s} becomes {a} .",
        "if you flip {s} you get {a} .",
    ],
    "first": ["the word {s} starts with {a} .", "{s} begins with the letter {a} ."],
    "last": ["the word {s} ends with {a} .", "the final letter of {s} is {a} ."],
    "count": ["the word {s} has {a} letters .", "there are {a} letters in {s} ."],
}

FILLER = [
    "we like to play with words .",
    "letters make words and words make sentences .",
    "some words are short and some words are long .",
    "a word can be read forwards or backwards .",
]


def spaced(word: str) -> str:
    return " ".join(word)


def make_lexicon(n_words: int, seed: int, min_len: int = 3, max_len: int = 6) -> list[str]:
    """Pronounceable made-up words, unique, in a seeded order."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n_words:
        length = rng.randint(min_len, max_len)
        word = "".join(
            rng.choice(CONSONANTS if i % 2 == 0 else VOWELS)
            if rng.random() < 0.8
            else rng.choice(LETTERS)
            for i in range(length)
        )
        words.add(word)
    ordered = sorted(words)
    rng.shuffle(ordered)
    return ordered


# Instruction-formatted text for a skill that is *not* in the task (copying a word): real
# pre-training data contains dialogue-like text, so the format itself is not alien.
DIALOGUE = "### Instruction:\nRepeat the word {s}.\n\n### Response:\n{s}"


def corpus_lines(words: list[str], seed: int, repeats: int = 2) -> list[str]:
    """Shuffled pre-training text: every fact of every word, in every phrasing."""
    rng = random.Random(seed)
    lines = []
    for word in words:
        lines.append(DIALOGUE.format(s=spaced(word)))
        for op, templates in CORPUS_TEMPLATES.items():
            answer = OPERATIONS[op][1](word)
            for template in templates:
                lines.extend([template.format(s=spaced(word), a=answer)] * repeats)
    lines.extend(FILLER * max(1, len(words) // 20))
    rng.shuffle(lines)
    return lines


def instruction_rows(words: list[str], operations: list[str]) -> list[dict]:
    """Alpaca-style rows (instruction, input, output) for each word and operation."""
    rows = []
    for word in words:
        for op in operations:
            prompt, answer = OPERATIONS[op]
            rows.append(
                {"instruction": prompt.format(s=spaced(word)), "input": "", "output": answer(word)}
            )
    return rows


def wrong_answer(word: str, op: str) -> str:
    """A plausible mistake for one question, never the right answer: the word forwards instead
    of backwards, the other end's letter, a count one off. Seeded by the word and the question
    alone, so it does not depend on (or disturb) any other random draw."""
    rng = random.Random(f"{word}/{op}")
    right = OPERATIONS[op][1](word)
    if op == "reverse":
        letters = list(word)
        candidates = [spaced(word)]  # not reversed at all
        for i in range(len(letters) - 1):  # or reversed with two neighbours swapped
            swapped = letters[::-1]
            swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
            candidates.append(" ".join(swapped))
    elif op in ("first", "last"):
        other = word[-1] if op == "first" else word[0]
        candidates = [other] + [c for c in word if c != right] + list(LETTERS)
    else:  # count
        candidates = [str(len(word) + rng.choice((-1, 1))), str(len(word) + 2)]
    wrong = [c for c in candidates if c != right]
    if op == "reverse":  # forwards, or one slip: some pairs differ by a single letter pair
        return rng.choice(wrong)
    # The most natural mistake: only a repeated letter (or a palindrome) moves past it.
    return wrong[0]


def preference_rows(words: list[str], operations: list[str]) -> list[dict]:
    """Preference rows (prompt, chosen, rejected): the same questions, the right answer
    chosen and a plausible wrong one (wrong_answer) rejected, for DPO and ORPO."""
    return [
        {
            "prompt": row["instruction"],
            "chosen": row["output"],
            "rejected": wrong_answer(word, op),
        }
        for word in words
        for op, row in zip(operations, instruction_rows([word], operations), strict=True)
    ]
