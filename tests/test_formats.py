"""Reading dataset files and normalising the six formats; every bad input names file and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunebench.data.formats import (
    CANONICAL_FIELDS,
    FORMATS,
    detect_format,
    normalise,
    prompt_text,
)
from tunebench.data.sources import (
    SUPPORTED_SUFFIXES,
    DataError,
    hub_splits,
    read_file,
    read_hub,
)


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def system(content: str) -> dict:
    return {"role": "system", "content": content}


# format -> (records, the internal examples they normalise to)
CASES: dict[str, tuple[list[dict], list[dict]]] = {
    "alpaca": (
        [
            {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        ],
        [
            {"messages": [user("Add 2 and 3."), assistant("5")]},
            {"messages": [user("Translate to French.\n\ncat"), assistant("chat")]},
        ],
    ),
    "messages": (
        [
            {"messages": [system("Be brief."), user("Hi"), assistant("Hello")]},
            {"messages": [user("2+2?"), assistant("4"), user("times 3?"), assistant("12")]},
        ],
        [
            {"messages": [system("Be brief."), user("Hi"), assistant("Hello")]},
            {"messages": [user("2+2?"), assistant("4"), user("times 3?"), assistant("12")]},
        ],
    ),
    "sharegpt": (
        [
            {
                "conversations": [
                    {"from": "system", "value": "Be brief."},
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello"},
                ]
            },
            {
                "conversations": [
                    {"from": "user", "value": "Up?"},
                    {"from": "assistant", "value": "Down"},
                ]
            },
        ],
        [
            {"messages": [system("Be brief."), user("Hi"), assistant("Hello")]},
            {"messages": [user("Up?"), assistant("Down")]},
        ],
    ),
    "prompt_completion": (
        [
            {"prompt": "The sky is", "completion": " blue."},
            {"prompt": "Grass is", "completion": " green."},
        ],
        [
            {"messages": [user("The sky is"), assistant(" blue.")]},
            {"messages": [user("Grass is"), assistant(" green.")]},
        ],
    ),
    "text": (
        [{"text": "Once upon a time."}, {"text": "The end."}],
        [{"text": "Once upon a time."}, {"text": "The end."}],
    ),
    "preference": (
        [
            {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
            {
                "prompt": [user("Capital of Italy?")],
                "chosen": [assistant("Rome")],
                "rejected": [assistant("Milan")],
            },
        ],
        [
            {"messages": [user("Capital of France?"), assistant("Paris")], "rejected": "Lyon"},
            {"messages": [user("Capital of Italy?"), assistant("Rome")], "rejected": "Milan"},
        ],
    ),
    "multiple_choice": (
        [
            {"question": "2+2?", "choices": ["3", "4"], "answer": 1},
            {"question": "Capital of France?", "choices": ["Paris", "Lyon"], "answer": "A"},
        ],
        [
            {"messages": [user("2+2?"), assistant("4")], "choices": ["3", "4"], "answer_index": 1},
            {
                "messages": [user("Capital of France?"), assistant("Paris")],
                "choices": ["Paris", "Lyon"],
                "answer_index": 0,
            },
        ],
    ),
}

# Which file types each format is written as; CSV/TSV only hold flat string columns.
FILE_CASES = [(fmt, ".jsonl") for fmt in FORMATS]
FILE_CASES += [(fmt, ".json") for fmt in FORMATS]
FILE_CASES += [
    (fmt, suffix) for fmt in ("alpaca", "prompt_completion") for suffix in (".csv", ".tsv")
]
FILE_CASES += [(fmt, ".parquet") for fmt in ("alpaca", "messages")]


def write(path: Path, records: list[dict]) -> Path:
    """Write records in the file type named by the suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    elif path.suffix in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            delimiter = "\t" if path.suffix == ".tsv" else ","
            writer = csv.DictWriter(f, fieldnames=list(records[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(records)
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        raise AssertionError(path)
    return path


def load(path: Path, fmt: str | None = None, columns=None, system_prompt=None) -> list[dict]:
    """read_file -> detect_format (unless fmt is given) -> normalise, as prepare does."""
    examples = []
    for where, record in read_file(path):
        row_fmt = fmt or detect_format(record, columns, where)
        examples.append(normalise(record, row_fmt, columns, where, system_prompt))
    return examples


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------- round trips


def test_cases_cover_every_format():
    assert set(CASES) == set(FORMATS) == set(CANONICAL_FIELDS)
    assert {suffix for _, suffix in FILE_CASES} == set(SUPPORTED_SUFFIXES)


@pytest.mark.parametrize("fmt,suffix", FILE_CASES)
def test_round_trip(tmp_path, fmt, suffix):
    records, expected = CASES[fmt]
    path = write(tmp_path / f"data{suffix}", records)
    located = read_file(path)
    assert [detect_format(r, None, w) for w, r in located] == [fmt] * len(records)
    assert load(path) == expected
    assert load(path, fmt=fmt) == expected  # an explicit format gives the same result


@pytest.mark.parametrize(
    "suffix,wheres",
    [
        (".jsonl", ["1", "2"]),
        (".json", ["row 1", "row 2"]),
        (".csv", ["2", "3"]),  # the header is line 1
        (".tsv", ["2", "3"]),
        (".parquet", ["row 1", "row 2"]),
    ],
)
def test_locations(tmp_path, suffix, wheres):
    path = write(tmp_path / f"data{suffix}", CASES["alpaca"][0])
    assert [w for w, _ in read_file(path)] == [f"{path}:{w}" for w in wheres]


def test_csv_values_are_strings_and_empty_cells_stay_empty(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("instruction,input,output\nq,,42\n", encoding="utf-8")
    assert read_file(path) == [(f"{path}:2", {"instruction": "q", "input": "", "output": "42"})]


def test_csv_lines_count_quoted_newlines_and_blank_lines(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('instruction,output\n"two\nlines",a\n\nq,b\n', encoding="utf-8")
    assert [w for w, _ in read_file(path)] == [f"{path}:2", f"{path}:5"]
    assert read_file(path)[0][1] == {"instruction": "two\nlines", "output": "a"}


def test_json_file_holding_json_lines(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    assert read_file(path) == [(f"{path}:1", {"text": "a"}), (f"{path}:3", {"text": "b"})]


def test_utf8_bom_and_line_separator_inside_strings(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"text": "a\u2028b"}, ensure_ascii=False).encode()
    )
    assert read_file(path) == [(f"{path}:1", {"text": "a\u2028b"})]


def test_column_mapping(tmp_path):
    path = write(tmp_path / "qa.csv", [{"question": "2+2?", "answer": "4"}])
    columns = {"instruction": "question", "output": "answer"}
    assert load(path, columns=columns) == [{"messages": [user("2+2?"), assistant("4")]}]


def test_column_mapping_moves_the_value(tmp_path):
    # A column named like another format's field must not also be seen under its own name.
    record = {"prompt": "Say hi", "text": "hi"}
    columns = {"completion": "text"}
    assert detect_format(record, columns) == "prompt_completion"
    assert normalise(record, "prompt_completion", columns, "x:1") == {
        "messages": [user("Say hi"), assistant("hi")]
    }


def test_explicit_format_overrides_detection():
    # Has instruction+output (alpaca) and text; the user says it is plain text.
    record = {"instruction": "q", "output": "a", "text": "q a"}
    assert detect_format(record) == "alpaca"
    assert normalise(record, "text", None, "x:1") == {"text": "q a"}


def test_system_prompt_is_prepended_only_when_missing():
    with_system = {"messages": [system("Own."), user("Hi"), assistant("Yo")]}
    without = {"instruction": "Hi", "output": "Yo"}
    assert normalise(with_system, "messages", None, "x:1", "Default.")["messages"][0] == system(
        "Own."
    )
    assert normalise(without, "alpaca", None, "x:2", "Default.") == {
        "messages": [system("Default."), user("Hi"), assistant("Yo")]
    }


def test_conversational_prompt_completion():
    record = {
        "prompt": [system("Be terse."), user("Colour of snow?")],
        "completion": [assistant("White.")],
    }
    assert normalise(record, "prompt_completion", None, "x:1") == {
        "messages": [system("Be terse."), user("Colour of snow?"), assistant("White.")]
    }


def test_null_optional_input_is_empty():
    # Parquet and hub datasets give null for a missing cell.
    record = {"instruction": "q", "input": None, "output": "a"}
    assert normalise(record, "alpaca", None, "x:1") == {"messages": [user("q"), assistant("a")]}


def test_prompt_text():
    example = {"messages": [system("Be  Brief."), user("Hi\tthere"), assistant("Hello")]}
    assert prompt_text(example) == "be brief.\nhi there"
    assert prompt_text({"text": " Once  Upon "}) == "once upon"


# ---------------------------------------------------------------- file errors


def test_invalid_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": \n', encoding="utf-8")
    assert error_of(read_file, path).startswith(f"{path}:3: invalid JSON (Expecting value")


def test_invalid_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"text": "a"},\n  {"text" "b"}\n]\n', encoding="utf-8")
    assert error_of(read_file, path) == f"{path}:3: invalid JSON (Expecting ':' delimiter)"


def test_non_object_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n[1, 2]\n', encoding="utf-8")
    assert error_of(read_file, path) == f"{path}:2: expected a JSON object, got list"


def test_non_object_array_item(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"text": "a"}, "b"]', encoding="utf-8")
    assert error_of(read_file, path) == f"{path}:row 2: expected a JSON object, got str"


def test_bad_utf8_byte(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert error_of(read_file, path).startswith(f"{path}:2: not valid UTF-8 (")


def test_csv_row_with_extra_field(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("instruction,output\nq,a\nq2,a2,extra\n", encoding="utf-8")
    assert error_of(read_file, path) == f"{path}:3: expected 2 fields, got 3"


def test_tsv_row_with_missing_field(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("instruction\toutput\nq\ta\nq2\n", encoding="utf-8")
    assert error_of(read_file, path) == f"{path}:3: expected 2 fields, got 1"


def test_bad_rows_can_be_collected_instead(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n[1]\n{"text": "b"}\n', encoding="utf-8")
    errors: list[str] = []
    assert [w for w, _ in read_file(path, errors)] == [f"{path}:1", f"{path}:4"]
    assert [e.split(": ", 1)[0] for e in errors] == [f"{path}:2", f"{path}:3"]


@pytest.mark.parametrize(
    "name,content", [("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", "text\n"), ("e.tsv", "")]
)
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert error_of(read_file, path) == f"{path}: no records"


def test_unknown_suffix(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello\n", encoding="utf-8")
    message = error_of(read_file, path)
    assert message.startswith(f"{path}: unsupported file type '.txt'")
    assert all(suffix in message for suffix in SUPPORTED_SUFFIXES)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert error_of(read_file, path) == f"{path}: no such file"


def test_not_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"not parquet at all")
    assert error_of(read_file, path).startswith(f"{path}: cannot read Parquet file (")


# ---------------------------------------------------------------- record errors


def one_record(tmp_path: Path, record: dict, fmt: str | None) -> Path:
    """A file whose line 2, after a good record of the same format, is `record`."""
    good = CASES[fmt or "alpaca"][0][0]
    return write(tmp_path / "rows.jsonl", [good, record])


@pytest.mark.parametrize(
    "record,fmt,reason",
    [
        ({"instruction": "q"}, "alpaca", "missing field 'output'"),
        ({"instruction": "q", "output": None}, "alpaca", "missing field 'output'"),
        ({"instruction": "q", "output": "  \n"}, None, "empty response in field 'output'"),
        ({"instruction": "q", "output": 5}, None, "field 'output' must be a string, got int"),
        ({"instruction": "q", "input": 1, "output": "a"}, None, "field 'input' must be a string"),
        ({"prompt": "p", "completion": ""}, None, "empty response in field 'completion'"),
        ({"text": " "}, None, "empty text in field 'text'"),
        ({"text": ["a"]}, None, "field 'text' must be a string, got list"),
        (
            {"question": "q", "answer": "a"},
            None,
            "unknown format: keys ['answer', 'question']; "
            "set datasets[].format and datasets[].columns",
        ),
        (
            {"conversations": [{"from": "bot", "value": "hi"}]},
            None,
            "field 'conversations' item 0: unknown role 'bot'; "
            "expected one of human, user, gpt, assistant, system",
        ),
        (
            {"messages": [user("Hi"), assistant("Yo"), user("And?")]},
            None,
            "field 'messages': last message must be from the assistant, got 'user'",
        ),
        (
            {"messages": [user("Hi"), assistant(" ")]},
            None,
            "field 'messages': empty response in the last assistant message",
        ),
        (
            {"messages": [user("Hi"), {"role": "assistant", "content": 3}]},
            None,
            "field 'messages' item 1: 'content' must be a string, got int",
        ),
        (
            {"messages": [{"role": "tool", "content": "x"}, assistant("a")]},
            None,
            "field 'messages' item 0: unknown role 'tool'",
        ),
        ({"messages": []}, None, "field 'messages' has no messages"),
        ({"messages": "Hi"}, "messages", "field 'messages' must be a list, got str"),
        (
            {"prompt": "p", "chosen": "a", "rejected": [user("b")]},
            None,
            "field 'rejected' must hold one assistant message",
        ),
        ({"prompt": "p", "chosen": "a"}, "preference", "missing field 'rejected'"),
    ],
)
def test_record_errors(tmp_path, record, fmt, reason):
    path = one_record(tmp_path, record, fmt)
    assert error_of(load, path, fmt=fmt).startswith(f"{path}:2: {reason}")


def test_mapped_column_errors_name_the_users_column(tmp_path):
    path = write(tmp_path / "qa.csv", [{"question": "q", "answer": ""}])
    columns = {"instruction": "question", "output": "answer"}
    assert error_of(load, path, columns=columns) == (
        f"{path}:2: empty response in field 'answer' (used as 'output')"
    )
    missing = {"instruction": "question", "output": "reply"}
    assert error_of(load, path, "alpaca", missing) == (
        f"{path}:2: missing field 'reply' (used as 'output')"
    )


def test_unknown_column_field_and_unknown_format():
    message = error_of(detect_format, {"q": "x"}, {"reply": "q"}, "x:1")
    assert message.startswith("x:1: datasets[].columns: unknown field 'reply'; known fields: ")
    assert error_of(normalise, {"text": "t"}, "csv", None, "x:1").startswith(
        "x:1: unknown format 'csv'"
    )


# ---------------------------------------------------------------- hub


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """Keep datasets' Arrow cache inside the test's tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def test_read_hub_local_dataset_directory(tmp_path, hub_cache):
    # load_dataset on a local folder is the real hub code path, and works offline.
    data = tmp_path / "hubdata"
    data.mkdir()
    write(data / "train.jsonl", CASES["alpaca"][0])
    write(data / "test.jsonl", [{"instruction": "Say yes.", "input": "", "output": "yes"}])
    dataset_id = str(data)
    assert sorted(hub_splits(dataset_id, None, None)) == ["test", "train"]
    located = read_hub(dataset_id, None, "test", None)
    assert located == [
        (f"{dataset_id}[test]:row 1", {"instruction": "Say yes.", "input": "", "output": "yes"})
    ]
    train = read_hub(dataset_id, None, "train", None)
    assert [w for w, _ in train] == [f"{dataset_id}[train]:row {n}" for n in (1, 2)]
    assert [normalise(r, detect_format(r), None, w) for w, r in train] == CASES["alpaca"][1]
    message = error_of(read_hub, dataset_id, None, "validation", None)
    assert message.startswith(f"{dataset_id}: cannot load split 'validation' (")
    assert "Unknown split" in message


def test_read_hub_missing_dataset_offline(hub_cache):
    message = error_of(read_hub, "nobody/missing-dataset", None, "train", None)
    assert message.startswith("nobody/missing-dataset: cannot load split 'train' (")
    assert "HF_HUB_OFFLINE" in message and "HF_TOKEN" in message
    message = error_of(hub_splits, "nobody/missing-dataset", None, None)
    assert message.startswith("nobody/missing-dataset: cannot list splits (")
