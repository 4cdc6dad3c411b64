"""Rule prepare_data: load -> normalise to chat messages (or plain text) -> de-duplicate ->
split -> leakage check -> train/validation/test JSONL + manifest.json. Once per dataset key.

Every check runs before anything is written, so a bad input leaves no half-prepared dataset.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from tunebench.builtin import wordops
from tunebench.data import formats, sources
from tunebench.data.sources import DataError
from tunebench.io import sha256_file, write_json, write_jsonl
from tunebench.spec import DEFAULT_TEST_FRACTION, DEFAULT_VALIDATION_FRACTION, DatasetSpec

SPLITS = ("train", "validation", "test")
MAX_REPORTED_BAD_ROWS = 20

__all__ = ["SPLITS", "DataError", "prepare"]

Records = list[tuple[str, dict]]


def load_records(spec: DatasetSpec, bad: list[str]) -> tuple[dict[str, Records] | Records, dict]:
    """Raw records with their locations: one list, or a dict of the source's own splits.
    With bad_rows: skip, unreadable rows (bad JSON, wrong field count) are appended to `bad`."""
    skipped = bad if spec.bad_rows == "skip" else None
    if spec.builtin == "wordops":
        words = wordops.make_lexicon(spec.n_words, seed=spec.split_seed)
        # format: preference asks for pairs: a wrong answer beside each right one.
        make_rows = (
            wordops.preference_rows if spec.format == "preference" else wordops.instruction_rows
        )
        rows = make_rows(words, spec.operations)
        return [(f"builtin:wordops:row {i + 1}", r) for i, r in enumerate(rows)], {
            "builtin": "wordops"
        }
    if spec.path is not None:
        return sources.read_file(Path(spec.path), skipped), {
            "path": spec.path,
            "sha256": sha256_file(spec.path),
        }
    if spec.files is not None:
        given = {s: getattr(spec.files, s) for s in SPLITS if getattr(spec.files, s)}
        records = {s: sources.read_file(Path(p), skipped) for s, p in given.items()}
        return records, {
            "files": {s: {"path": p, "sha256": sha256_file(p)} for s, p in given.items()}
        }
    if spec.splits is not None:
        given = {s: getattr(spec.splits, s) for s in SPLITS if getattr(spec.splits, s)}
        return {s: _read_split_source(source, skipped) for s, source in given.items()}, {
            "splits": {s: _split_source_facts(source) for s, source in given.items()}
        }
    hub = spec.hub
    facts = {"hub": hub.id, "config": hub.config, "revision": hub.revision}
    if hub.split:
        return sources.read_hub(hub.id, hub.config, hub.split, hub.revision), {
            **facts,
            "split": hub.split,
        }
    available = sources.hub_splits(hub.id, hub.config, hub.revision)
    own = {s: s for s in SPLITS if s in available}
    if "train" in own and "test" in own:
        return {s: sources.read_hub(hub.id, hub.config, s, hub.revision) for s in own}, {
            **facts,
            "splits": sorted(own),
        }
    return sources.read_hub(hub.id, hub.config, "train", hub.revision), {**facts, "split": "train"}


def _read_split_source(source, skipped: list[str] | None) -> Records:
    """A splits.<split> source's records, cut to its first `rows`."""
    if source.path is not None:
        records = sources.read_file(Path(source.path), skipped)
    else:
        hub = source.hub
        records = sources.read_hub(hub.id, hub.config, hub.split, hub.revision)
    return records[: source.rows]


def _split_source_facts(source) -> dict:
    facts = {"rows": source.rows}
    if source.path is not None:
        return facts | {"path": source.path, "sha256": sha256_file(source.path)}
    return facts | source.hub.model_dump(mode="json")


def normalise_all(
    records: Records,
    spec: DatasetSpec,
    counts: Counter,
    bad: list,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """Internal examples; a bad row raises, or with bad_rows: skip is counted and dropped.
    `columns`: a split source's own column map, instead of the dataset's."""
    examples = []
    for where, record in records:
        try:
            examples.append(normalise_record(record, spec, where, columns))
        except DataError as err:
            if spec.bad_rows == "error":
                raise
            counts["skipped_bad_rows"] += 1
            bad.append(str(err))
    return examples


def normalise_record(
    record: dict, spec: DatasetSpec, where: str, columns: dict[str, str] | None = None
) -> dict:
    columns = (spec.columns if columns is None else columns) or None
    fmt = formats.detect_format(record, columns, where) if spec.format == "auto" else spec.format
    return formats.normalise(record, fmt, columns, where, spec.system_prompt)


def deduplicate(examples: list[dict], counts: Counter, enabled: bool = True) -> list[dict]:
    """Drop exact and normalised (case, whitespace) duplicates, counting each kind."""
    if not enabled:
        return examples
    seen_exact, seen_normalised, kept = set(), set(), []
    for ex in examples:
        exact = json.dumps(ex, sort_keys=True)
        normal = formats.prompt_text(ex) + "\x00" + formats.response_text(ex)
        if exact in seen_exact:
            counts["exact_duplicates"] += 1
        elif normal in seen_normalised:
            counts["normalised_duplicates"] += 1
        else:
            kept.append(ex)
        seen_exact.add(exact)
        seen_normalised.add(normal)
    return kept


def _size(n: int, fraction: float | None, size: int | None, default: float) -> int:
    if size is not None:
        return size
    return round(n * (default if fraction is None else fraction))


def split(examples: list[dict], spec: DatasetSpec) -> dict[str, list[dict]]:
    """Seeded split by fractions or counts; the order of each split follows the source."""
    order = list(range(len(examples)))
    random.Random(spec.split_seed).shuffle(order)
    n_test = max(1, _size(len(order), spec.test_fraction, spec.test_size, DEFAULT_TEST_FRACTION))
    n_val = _size(
        len(order), spec.validation_fraction, spec.validation_size, DEFAULT_VALIDATION_FRACTION
    )
    if n_test + n_val >= len(order):
        raise DataError(
            f"dataset {spec.name!r}: {len(order)} examples cannot give {n_test} test "
            f"and {n_val} validation examples and still leave training data"
        )
    parts = {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    return {name: [examples[i] for i in sorted(parts[name])] for name in SPLITS}


def check_leakage(splits: dict[str, list[dict]], spec: DatasetSpec, counts: Counter) -> None:
    """Held-out examples whose prompt also occurs in train: removed (default) or reported."""
    train_prompts = {formats.prompt_text(ex) for ex in splits["train"]}
    for name in ("validation", "test"):
        clean = [ex for ex in splits[name] if formats.prompt_text(ex) not in train_prompts]
        counts[f"{name}_prompts_in_train"] = len(splits[name]) - len(clean)
        if spec.leakage == "remove":
            splits[name] = clean


def _split_columns(spec: DatasetSpec, split_name: str) -> dict[str, str] | None:
    source = getattr(spec.splits, split_name) if spec.splits else None
    return source.columns if source is not None else None


def prepare(spec: DatasetSpec, out_dir: Path) -> dict:
    bad: list[str] = []
    loaded, source = load_records(spec, bad)
    counts: Counter = Counter({"skipped_bad_rows": len(bad)})
    if isinstance(loaded, dict):  # the source's own splits
        counts["read"] = sum(len(r) for r in loaded.values())
        splits = {
            name: deduplicate(
                normalise_all(loaded.get(name, []), spec, counts, bad, _split_columns(spec, name)),
                counts,
                spec.deduplicate,
            )
            for name in SPLITS
        }
    else:
        counts["read"] = len(loaded)
        examples = normalise_all(loaded, spec, counts, bad)
        splits = split(deduplicate(examples, counts, spec.deduplicate), spec)
    check_leakage(splits, spec, counts)
    if not splits["train"] or not splits["test"]:
        raise DataError(
            f"dataset {spec.name!r}: no training or no test examples left "
            f"({counts['read']} rows read, {dict(counts)})"
        )
    next_id = 0
    for name in SPLITS:
        for ex in splits[name]:
            ex["id"] = next_id
            next_id += 1
        counts[name] = len(splits[name])
    for name in SPLITS:
        write_jsonl(out_dir / f"{name}.jsonl", splits[name])
    manifest = {
        "dataset": spec.model_dump(mode="json", exclude={"evaluation"}),
        "source": source,
        "counts": dict(counts),
        "bad_rows": bad[:MAX_REPORTED_BAD_ROWS],
        "test_sha256": sha256_file(out_dir / "test.jsonl"),
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest
