"""Rule prepare_data: load -> normalise to chat messages -> de-duplicate -> seeded split ->
leakage check -> train/validation/test JSONL + manifest.json. Once per dataset key."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from tunebench.builtin import wordops
from tunebench.io import write_json, write_jsonl
from tunebench.spec import DatasetSpec

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """A bad input row; the message names file and line."""


def alpaca_to_messages(row: dict) -> list[dict]:
    user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def _check_alpaca(row: object, where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for field in ("instruction", "output"):
        if field not in row:
            raise DataError(
                f"{where}: missing field {field!r} (alpaca rows need instruction, output)"
            )
        if not isinstance(row[field], str):
            raise DataError(f"{where}: field {field!r} must be a string")
    if not row["output"].strip():
        raise DataError(f"{where}: empty response in field 'output'")
    return row


def load_rows(spec: DatasetSpec) -> tuple[list[dict], dict]:
    """Rows as alpaca dicts, plus source facts for the manifest."""
    if spec.builtin == "wordops":
        words = wordops.make_lexicon(spec.n_words, seed=spec.split_seed)
        return wordops.instruction_rows(words, spec.operations), {"builtin": "wordops"}
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(
            f"{path}: dataset file not found (datasets[].path is relative to the "
            "directory you run tunebench from)"
        )
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
            rows.append(_check_alpaca(row, f"{path}:{lineno}"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return rows, {"path": str(path), "sha256": digest}


def normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def prompt_key(messages: list[dict]) -> str:
    return normalised(" ".join(m["content"] for m in messages[:-1]))


def deduplicate(examples: list[dict]) -> tuple[list[dict], dict]:
    seen_exact, seen_norm, kept = set(), set(), []
    counts = {"exact_duplicates": 0, "normalised_duplicates": 0}
    for ex in examples:
        exact = json.dumps(ex["messages"], sort_keys=True)
        norm = tuple((m["role"], normalised(m["content"])) for m in ex["messages"])
        if exact in seen_exact:
            counts["exact_duplicates"] += 1
        elif norm in seen_norm:
            counts["normalised_duplicates"] += 1
        else:
            kept.append(ex)
        seen_exact.add(exact)
        seen_norm.add(norm)
    return kept, counts


def split(examples: list[dict], spec: DatasetSpec) -> dict[str, list[dict]]:
    order = list(range(len(examples)))
    random.Random(spec.split_seed).shuffle(order)
    n_test = max(1, round(len(order) * spec.test_fraction))
    n_val = round(len(order) * spec.validation_fraction)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {
        name: [examples[i] for i in sorted(idx)]
        for name, idx in (("train", train), ("validation", val), ("test", test))
    }


def remove_leakage(splits: dict[str, list[dict]]) -> int:
    """Drop held-out examples whose prompt also occurs in train; return how many."""
    train_prompts = {prompt_key(ex["messages"]) for ex in splits["train"]}
    removed = 0
    for name in ("validation", "test"):
        kept = [ex for ex in splits[name] if prompt_key(ex["messages"]) not in train_prompts]
        removed += len(splits[name]) - len(kept)
        splits[name] = kept
    return removed


def prepare(spec: DatasetSpec, out_dir: Path) -> dict:
    rows, source = load_rows(spec)
    examples = [{"id": i, "messages": alpaca_to_messages(r)} for i, r in enumerate(rows)]
    examples, dup_counts = deduplicate(examples)
    splits = split(examples, spec)
    leaked = remove_leakage(splits)
    if not splits["train"] or not splits["test"]:
        raise DataError(
            f"dataset {spec.name!r}: too few examples for a train and a test split "
            f"({len(rows)} rows read)"
        )
    for name in SPLITS:
        write_jsonl(out_dir / f"{name}.jsonl", splits[name])
    manifest = {
        "dataset": spec.model_dump(mode="json"),
        "source": source,
        "format": "alpaca",
        "counts": {
            "read": len(rows),
            **dup_counts,
            "leaked_prompts_removed": leaked,
            **{name: len(splits[name]) for name in SPLITS},
        },
        "test_sha256": hashlib.sha256((out_dir / "test.jsonl").read_bytes()).hexdigest(),
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest
