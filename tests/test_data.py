"""Dataset preparation: deterministic splits, de-duplication, leakage removal, row errors."""

from __future__ import annotations

import json

import pytest

from tunebench.data.prepare import DataError, prepare
from tunebench.data.tokenize import load_split
from tunebench.io import read_json, read_jsonl
from tunebench.spec import DatasetSpec


def test_split_is_deterministic_and_disjoint(tmp_path):
    spec = DatasetSpec(name="w", builtin="wordops", n_words=80)
    prepare(spec, tmp_path / "a")
    prepare(spec, tmp_path / "b")
    for split in ("train", "validation", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (
            tmp_path / "b" / f"{split}.jsonl"
        ).read_bytes()
    train = {json.dumps(e["messages"][:-1]) for e in read_jsonl(tmp_path / "a" / "train.jsonl")}
    test = {json.dumps(e["messages"][:-1]) for e in read_jsonl(tmp_path / "a" / "test.jsonl")}
    assert train and test and not train & test
    counts = read_json(tmp_path / "a" / "manifest.json")["counts"]
    assert counts["read"] == 80 * 4
    assert counts["train"] + counts["validation"] + counts["test"] == counts["read"]


def alpaca_file(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


def test_duplicates_and_leaked_prompts_are_removed(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(40)]
    rows += [rows[0], {"instruction": "Q1 ", "output": "A1"}]  # exact and normalised duplicates
    # Same prompt, different answers: one of them may land in test and must not stay there.
    rows += [{"instruction": f"dup{i}", "output": v} for i in range(10) for v in ("x", "y")]
    path = alpaca_file(tmp_path, rows)
    manifest = prepare(DatasetSpec(name="f", path=str(path), test_fraction=0.3), tmp_path / "out")
    counts = manifest["counts"]
    assert counts["exact_duplicates"] == 1
    assert counts["normalised_duplicates"] == 1
    assert counts["test_prompts_in_train"] + counts["validation_prompts_in_train"] > 0
    train = {e["messages"][0]["content"] for e in read_jsonl(tmp_path / "out" / "train.jsonl")}
    test = {e["messages"][0]["content"] for e in read_jsonl(tmp_path / "out" / "test.jsonl")}
    assert not train & test


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"instruction": "a", "output": "b"}, "{not json\n"], r"rows.jsonl:2: invalid JSON"),
        ([{"instruction": "a"}], r"rows.jsonl:1: missing field 'output'"),
        ([{"instruction": "a", "output": "  "}], r"rows.jsonl:1: empty response"),
        (
            [{"instruction": 3, "output": "b"}],
            r"rows.jsonl:1: field 'instruction' must be a string",
        ),
        (["[1, 2]\n"], r"rows.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, rows, message):
    path = alpaca_file(tmp_path, rows)
    with pytest.raises(DataError, match=message):
        prepare(DatasetSpec(name="f", path=str(path), format="alpaca"), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_tokenised_masks_cover_exactly_the_response(tiny_data, tiny_model):
    from transformers import AutoTokenizer

    _, data_dir, tokenized = tiny_data
    tokenizer = AutoTokenizer.from_pretrained(tiny_model[1])
    example = load_split(tokenized, "test")[0]
    reference = read_jsonl(data_dir / "test.jsonl")[0]["messages"][-1]["content"]
    response = [
        t for t, m in zip(example["input_ids"], example["completion_mask"], strict=True) if m
    ]
    assert sum(example["completion_mask"]) == len(example["input_ids"]) - example["prompt_length"]
    assert tokenizer.decode(response) == reference + tokenizer.eos_token
