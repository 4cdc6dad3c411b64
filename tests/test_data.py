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


ROWS_BY_FORMAT = {
    "alpaca": lambda i: {"instruction": f"Say {i}", "input": "", "output": f"word {i}"},
    "messages": lambda i: {
        "messages": [
            {"role": "user", "content": f"Say {i}"},
            {"role": "assistant", "content": f"word {i}"},
        ]
    },
    "sharegpt": lambda i: {
        "conversations": [
            {"from": "human", "value": f"Say {i}"},
            {"from": "gpt", "value": f"word {i}"},
        ]
    },
    "prompt_completion": lambda i: {"prompt": f"Say {i}", "completion": f"word {i}"},
    "text": lambda i: {"text": f"the word {i} is a word"},
    "preference": lambda i: {"prompt": f"Say {i}", "chosen": f"word {i}", "rejected": "no"},
    "multiple_choice": lambda i: {
        "question": f"Say {i}",
        "choices": [f"word {i}", "no"],
        "answer": 0,
    },
}


@pytest.mark.parametrize("fmt", sorted(ROWS_BY_FORMAT))
@pytest.mark.parametrize("template", ["auto", "chatml"])
def test_each_format_round_trips_to_the_training_text(fmt, template, tmp_path, tiny_model):
    """Prepared and tokenised examples decode back to exactly the rendered training text,
    with the loss mask starting where the response starts."""
    from transformers import AutoTokenizer

    from tunebench.data.templates import render
    from tunebench.data.tokenize import tokenize_dataset

    path = alpaca_file(tmp_path, [ROWS_BY_FORMAT[fmt](i) for i in range(30)])
    spec = DatasetSpec(name="f", path=str(path), template=template)
    manifest = prepare(spec, tmp_path / "data")
    assert manifest["counts"]["read"] == 30
    tokenizer = AutoTokenizer.from_pretrained(tiny_model[1])
    tokenize_dataset(tokenizer, spec, tmp_path / "data", tmp_path / "tok", "tiny")
    example = read_jsonl(tmp_path / "data" / "train.jsonl")[0]
    tokens = load_split(tmp_path / "tok", "train")[0]
    rendered = render(example, tokenizer, template)
    assert tokenizer.decode(tokens["input_ids"]) == rendered.prompt + rendered.response
    response = [t for t, m in zip(tokens["input_ids"], tokens["completion_mask"], strict=True) if m]
    assert tokenizer.decode(response) == rendered.response
    if fmt == "text":
        assert example["text"].startswith("the word")
    else:
        assert example["messages"][-1]["content"].startswith("word")


def test_bad_rows_can_be_skipped_and_counted(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(30)]
    rows[3] = {"instruction": "q3", "output": ""}
    rows[7] = "{broken\n"
    path = alpaca_file(tmp_path, rows)
    manifest = prepare(DatasetSpec(name="f", path=str(path), bad_rows="skip"), tmp_path / "out")
    assert manifest["counts"]["skipped_bad_rows"] == 2
    assert any("rows.jsonl:8" in msg for msg in manifest["bad_rows"])
    assert sum(manifest["counts"][s] for s in ("train", "validation", "test")) == 28


def test_a_dataset_with_its_own_splits_keeps_them(tmp_path):
    (tmp_path / "tr").mkdir()
    train = alpaca_file(
        tmp_path / "tr", [{"instruction": f"q{i}", "output": "a"} for i in range(9)]
    )
    test = tmp_path / "test.csv"
    test.write_text("instruction,output\nt1,a\nt2,b\n")
    spec = DatasetSpec(name="f", files={"train": str(train), "test": str(test)})
    manifest = prepare(spec, tmp_path / "out")
    assert manifest["counts"]["train"] == 9 and manifest["counts"]["test"] == 2
    assert manifest["source"]["files"]["test"]["sha256"]


@pytest.mark.parametrize("mode", ["drop", "truncate"])
def test_too_long_examples_are_dropped_or_truncated(tiny_data, mode):
    from tunebench.training.train import fit_length

    _, _, tokenized = tiny_data
    train = load_split(tokenized, "train")
    limit = sorted(len(ids) for ids in train["input_ids"])[len(train) // 2]
    over = sum(len(ids) > limit for ids in train["input_ids"])
    fitted, affected = fit_length(train, limit, mode)
    assert affected == over > 0
    assert max(len(ids) for ids in fitted["input_ids"]) <= limit
    assert len(fitted) == (len(train) if mode == "truncate" else len(train) - over)


def test_deduplication_can_be_turned_off(tmp_path):
    rows = [{"instruction": f"q{i % 10}", "output": f"a{i % 10}"} for i in range(30)]
    path = alpaca_file(tmp_path, rows)
    kept = prepare(
        DatasetSpec(name="f", path=str(path), deduplicate=False, leakage="report"), tmp_path / "all"
    )
    assert sum(kept["counts"][s] for s in ("train", "validation", "test")) == 30
    deduped = prepare(DatasetSpec(name="f", path=str(path)), tmp_path / "dedup")
    assert deduped["counts"]["exact_duplicates"] == 20


def test_the_contacts_data_is_what_its_generator_writes():
    """experiments/data/contacts.jsonl (the real-model experiment's task) is generated, not
    edited by hand: the committed file must be exactly the generator's output."""
    import importlib.util

    from conftest import REPO

    path = REPO / "experiments" / "data" / "make_contacts.py"
    spec = importlib.util.spec_from_file_location("make_contacts", path)
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.OUT.read_text() == generator.render(generator.rows())
    assert len(generator.rows()) == 700


FIXTURES = __import__("conftest").REPO / "experiments" / "reproduce" / "fixtures"


def test_each_split_can_come_from_its_own_source(tmp_path):
    """Train on one hub dataset, score on another's test split (a local folder in the hub's
    layout, read by the real datasets code path), each with its own columns and row count."""
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"q": "1+1?", "a": "#### 2"}\n{"q": "2+2?", "a": "#### 4"}\n')
    spec = DatasetSpec.model_validate(
        {
            "name": "mm-gsm8k",
            "splits": {
                "train": {
                    "hub": {"id": str(FIXTURES / "meta-math/MetaMathQA"), "split": "train"},
                    "rows": 5,
                    "columns": {"instruction": "query", "output": "response"},
                },
                "validation": {"path": str(extra), "columns": {"instruction": "q", "output": "a"}},
                "test": {
                    "hub": {
                        "id": str(FIXTURES / "openai/gsm8k"),
                        "config": "main",
                        "split": "test",
                    },
                    "columns": {"instruction": "question", "output": "answer"},
                },
            },
            "deduplicate": False,
            "leakage": "report",
        }
    )
    manifest = prepare(spec, tmp_path / "out")
    counts = manifest["counts"]
    assert (counts["train"], counts["validation"], counts["test"]) == (5, 2, 4)
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert train[0]["messages"][-1]["content"].endswith("The answer is: 6")
    test = read_jsonl(tmp_path / "out" / "test.jsonl")
    assert test[0]["messages"][0]["content"].startswith("A farmer has 7 rows")
    assert manifest["source"]["splits"]["train"]["rows"] == 5
    assert manifest["source"]["splits"]["validation"]["sha256"]
    # The fixture's last MetaMathQA rows restate test questions; the first 5 do not.
    assert counts["test_prompts_in_train"] == 0


def test_a_split_source_names_its_split_and_one_source():
    with pytest.raises(ValueError, match="hub.split"):
        DatasetSpec.model_validate(
            {"name": "d", "splits": {"train": {"hub": {"id": "x"}}, "test": {"path": "t.jsonl"}}}
        )
    with pytest.raises(ValueError, match="exactly one of hub, path"):
        DatasetSpec.model_validate(
            {"name": "d", "splits": {"train": {}, "test": {"path": "t.jsonl"}}}
        )


def test_two_local_dataset_folders_named_alike_keep_their_own_rows(tmp_path):
    """datasets 5.2 caches a local folder by its name and card: without a cache of its own per
    read, the second folder returned the first one's rows."""
    from tunebench.data.sources import read_hub

    counts = []
    for n, folder in enumerate((tmp_path / "a" / "gsm8k", tmp_path / "b" / "gsm8k"), 1):
        (folder / "main").mkdir(parents=True)
        (folder / "README.md").write_text((FIXTURES / "openai/gsm8k/README.md").read_text())
        rows = "".join(f'{{"question": "q{i}", "answer": "#### {i}"}}\n' for i in range(n))
        (folder / "main" / "test.jsonl").write_text(rows)
        (folder / "main" / "train.jsonl").write_text(rows)
        counts.append(len(read_hub(str(folder), "main", "test", None)))
    assert counts == [1, 2]


def test_an_empty_validation_split_loads_as_an_empty_dataset(tmp_path):
    from tunebench.data.tokenize import write_empty_splits

    write_empty_splits(tmp_path)
    assert len(load_split(tmp_path, "validation")) == 0
