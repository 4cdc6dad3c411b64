"""Dataset formats: detect a record's format and normalise it to the internal example.

The internal example is {"messages": [{"role", "content"}, ...]} whose last message is the
assistant response (the training target), or {"text": ...} for plain-text data. Preference
records also keep {"rejected": ...} for the dpo and orpo objectives; SFT trains on the chosen
reply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tunebench.data.sources import DataError

FORMATS = (
    "alpaca",
    "messages",
    "sharegpt",
    "prompt_completion",
    "text",
    "preference",
    "multiple_choice",
)
CANONICAL_FIELDS = {
    "alpaca": ("instruction", "input", "output"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "preference": ("prompt", "chosen", "rejected"),
    "multiple_choice": ("question", "choices", "answer"),
}
KNOWN_FIELDS = sorted({field for fields in CANONICAL_FIELDS.values() for field in fields})
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _error(where: str, message: str) -> DataError:
    return DataError(f"{where}: {message}" if where else message)


class _Row:
    """A record with datasets[].columns applied; errors name the user's own column."""

    def __init__(self, record: dict, columns: Mapping[str, str] | None, where: str):
        self.where, self.labels = where, {}
        self.data = dict(record)
        for canonical, actual in (columns or {}).items():
            if canonical not in KNOWN_FIELDS:
                raise _error(
                    where,
                    f"datasets[].columns: unknown field {canonical!r}; "
                    f"known fields: {', '.join(KNOWN_FIELDS)}",
                )
            # Move the value, so that e.g. {output: text} does not also look like text format.
            self.data.pop(actual, None)
            self.data[canonical] = record.get(actual)
            self.labels[canonical] = f"{actual!r} (used as {canonical!r})"

    def label(self, field: str) -> str:
        return self.labels.get(field, repr(field))

    def has(self, field: str) -> bool:
        # Hub and Parquet data give null for a column a row lacks: treat it as absent.
        return self.data.get(field) is not None

    def error(self, message: str) -> DataError:
        return _error(self.where, message)

    def get(self, field: str) -> object:
        if not self.has(field):
            raise self.error(f"missing field {self.label(field)}")
        return self.data[field]

    def string(self, field: str, value: object = None) -> str:
        value = self.get(field) if value is None else value
        if not isinstance(value, str):
            raise self.error(f"field {self.label(field)} must be a string, got {_type_name(value)}")
        return value


def detect_format(record: dict, columns: Mapping[str, str] | None = None, where: str = "") -> str:
    """The format of one record, by which (mapped) keys it has."""
    row = _Row(record, columns, where)
    if isinstance(row.data.get("messages"), list):
        return "messages"
    checks = (
        ("multiple_choice", ("choices", "answer")),
        ("sharegpt", ("conversations",)),
        ("preference", ("chosen", "rejected")),
        ("alpaca", ("instruction", "output")),
        ("prompt_completion", ("prompt", "completion")),
        ("text", ("text",)),
    )
    for fmt, fields in checks:
        if all(row.has(field) for field in fields):
            return fmt
    raise row.error(
        f"unknown format: keys {sorted(record)}; set datasets[].format and datasets[].columns"
    )


def normalise(
    record: dict,
    fmt: str,
    columns: Mapping[str, str] | None,
    where: str,
    system_prompt: str | None = None,
) -> dict:
    """The internal example for one record of format `fmt` (see the module docstring)."""
    if fmt not in FORMATS:
        raise _error(where, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    row = _Row(record, columns, where)
    if fmt == "text":
        text = row.string("text")
        if not text.strip():
            raise row.error(f"empty text in field {row.label('text')}")
        return {"text": text}
    if fmt == "preference":
        messages, rejected = _preference(row)
        example = {"messages": messages, "rejected": rejected}
    elif fmt == "multiple_choice":
        example = _multiple_choice(row)
    else:
        example = {"messages": _CONVERTERS[fmt](row)}
    if system_prompt is not None and not any(m["role"] == "system" for m in example["messages"]):
        example["messages"].insert(0, {"role": "system", "content": system_prompt})
    return example


def _message(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _response(row: _Row, field: str, value: object = None) -> str:
    """A string response (or a list of one assistant message) that is not blank."""
    value = row.get(field) if value is None else value
    if isinstance(value, list):
        messages = _messages(row, field, value)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise row.error(f"field {row.label(field)} must hold one assistant message")
        value = messages[0]["content"]
    text = row.string(field, value)
    if not text.strip():
        raise row.error(f"empty response in field {row.label(field)}")
    return text


def _prompt(row: _Row, field: str) -> list[dict]:
    """A prompt given as a string (one user message) or as a list of messages."""
    value = row.get(field)
    if isinstance(value, list):
        if not value:
            raise row.error(f"field {row.label(field)} has no messages")
        return _messages(row, field, value)
    return [_message("user", row.string(field, value))]


def _messages(row: _Row, field: str, value: object, sharegpt: bool = False) -> list[dict]:
    if not isinstance(value, list):
        raise row.error(f"field {row.label(field)} must be a list, got {_type_name(value)}")
    return [_turn(row, field, n, item, sharegpt) for n, item in enumerate(value)]


def _turn(row: _Row, field: str, n: int, item: object, sharegpt: bool) -> dict:
    at = f"field {row.label(field)} item {n}"
    if not isinstance(item, dict):
        raise row.error(f"{at} must be an object, got {_type_name(item)}")
    # ShareGPT uses from/value; many ShareGPT-style datasets use role/content instead.
    role_key, content_key = (
        ("from", "value") if sharegpt and "from" in item else ("role", "content")
    )
    role, content = item.get(role_key), item.get(content_key)
    roles = SHAREGPT_ROLES if sharegpt else {r: r for r in ROLES}
    if role not in roles:
        raise row.error(f"{at}: unknown role {role!r}; expected one of {', '.join(roles)}")
    if not isinstance(content, str):
        raise row.error(f"{at}: {content_key!r} must be a string, got {_type_name(content)}")
    return _message(roles[role], content)


def _conversation(row: _Row, field: str, sharegpt: bool) -> list[dict]:
    messages = _messages(row, field, row.get(field), sharegpt)
    if not messages:
        raise row.error(f"field {row.label(field)} has no messages")
    if messages[-1]["role"] != "assistant":
        raise row.error(
            f"field {row.label(field)}: last message must be from the assistant, "
            f"got {messages[-1]['role']!r}"
        )
    if not messages[-1]["content"].strip():
        raise row.error(f"field {row.label(field)}: empty response in the last assistant message")
    return messages


def _alpaca(row: _Row) -> list[dict]:
    instruction = row.string("instruction")
    extra = row.string("input") if row.has("input") else ""
    user = instruction + (f"\n\n{extra}" if extra.strip() else "")
    return [_message("user", user), _message("assistant", _response(row, "output"))]


def _prompt_completion(row: _Row) -> list[dict]:
    prompt = _prompt(row, "prompt")
    return [*prompt, _message("assistant", _response(row, "completion"))]


def _preference(row: _Row) -> tuple[list[dict], str]:
    prompt = _prompt(row, "prompt")
    chosen, rejected = _response(row, "chosen"), _response(row, "rejected")
    return [*prompt, _message("assistant", chosen)], rejected


_CONVERTERS = {
    "alpaca": _alpaca,
    "messages": lambda row: _conversation(row, "messages", sharegpt=False),
    "sharegpt": lambda row: _conversation(row, "conversations", sharegpt=True),
    "prompt_completion": _prompt_completion,
}


def _multiple_choice(row: _Row) -> dict:
    """{question, choices, answer: index, letter or choice text} -> a chat example whose response
    is the right choice, plus the choices for log-likelihood scoring."""
    question, choices, answer = row.string("question"), row.get("choices"), row.get("answer")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise row.error(
            f"field {row.label('choices')} must be a list of at least two non-empty strings"
        )
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices)]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        index = answer
    elif isinstance(answer, str) and answer in choices:
        index = choices.index(answer)
    elif isinstance(answer, str) and len(answer) == 1 and answer.upper() in letters:
        index = letters.index(answer.upper())
    else:
        raise row.error(
            f"field {row.label('answer')} must be a choice index, a letter or one of the "
            f"choices, got {answer!r}"
        )
    messages = [_message("user", question), _message("assistant", choices[index])]
    return {"messages": messages, "choices": choices, "answer_index": index}


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def prompt_text(example: dict) -> str:
    """Everything but the response, whitespace- and case-normalised, for de-duplication and
    leakage checks: the non-final messages one per line, or a text example's whole text."""
    if "messages" in example:
        return "\n".join(_normalised(m["content"]) for m in example["messages"][:-1])
    return _normalised(example["text"])


def response_text(example: dict) -> str:
    """The response, normalised like prompt_text (a text example has none)."""
    return _normalised(example["messages"][-1]["content"]) if "messages" in example else ""
