"""Rule tokenize: render prepared examples with the tokenizer's chat template (or the alpaca
template when it has none) and tokenise them once per dataset x tokenizer.

Output columns: input_ids, completion_mask (1 on response tokens: the loss mask), prompt_length;
for preference data also rejected_ids, the rejected response's tokens (they follow the same
prompt: input_ids[:prompt_length]). Every run that uses this dataset and tokenizer, and its
evaluation, reads the same files.
"""

from __future__ import annotations

from pathlib import Path

from tunebench.data.prepare import SPLITS
from tunebench.data.templates import render, resolve
from tunebench.io import atomic_path, read_jsonl
from tunebench.spec import DatasetSpec

# The columns of every tokenised split (the loss mask is 1 on response tokens).
COLUMNS = ("id", "input_ids", "completion_mask", "prompt_length")
# Preference data adds the rejected response (after the same prompt).
REJECTED = "rejected_ids"


def tokenize_example(tokenizer, example: dict, spec: DatasetSpec) -> dict:
    rendered = render(example, tokenizer, spec.template, spec.custom_template)
    # The template already holds any BOS, so no special tokens are added here.
    prompt_ids = tokenizer(rendered.prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(rendered.response, add_special_tokens=False)["input_ids"]
    loss_on_prompt = 1 if spec.loss_on == "all" else 0
    tokens = {
        "input_ids": prompt_ids + response_ids,
        "completion_mask": [loss_on_prompt] * len(prompt_ids) + [1] * len(response_ids),
        "prompt_length": len(prompt_ids),
    }
    if "rejected" in example:  # rendered as the chosen reply is, with the same ending
        reply = {"role": "assistant", "content": example["rejected"]}
        rejected = {**example, "messages": [*example["messages"][:-1], reply]}
        rendered_rejected = render(rejected, tokenizer, spec.template, spec.custom_template)
        tokens[REJECTED] = tokenizer(rendered_rejected.response, add_special_tokens=False)[
            "input_ids"
        ]
    return tokens


def tokenize_dataset(
    tokenizer, spec: DatasetSpec, data_dir: Path, out_dir: Path, tokenizer_source: str
) -> dict:
    """Write the tokenised splits to out_dir; return what the manifest records of them."""
    from datasets import Dataset

    lengths = {}
    for name in SPLITS:
        rows = [
            tokenize_example(tokenizer, ex, spec) | {"id": ex["id"]}
            for ex in read_jsonl(data_dir / f"{name}.jsonl")
        ]
        names = COLUMNS + ((REJECTED,) if rows and all(REJECTED in r for r in rows) else ())
        columns = {k: [r[k] for r in rows] for k in names}
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            Dataset.from_dict(columns).to_parquet(str(tmp))
        lengths[name] = {
            "examples": len(rows),
            "preference_pairs": len(rows) if REJECTED in columns else 0,
            "max_tokens": max((len(r["input_ids"]) for r in rows), default=0),
            "tokens": sum(len(r["input_ids"]) for r in rows),
        }
    return {
        "tokenizer": tokenizer_source,
        "template": resolve(spec.template, tokenizer),
        "loss_on": spec.loss_on,
        "splits": lengths,
    }


def load_split(tokenized_dir: Path, name: str):
    """A split as a `datasets.Dataset`, what trainers take."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    path = tokenized_dir / f"{name}.parquet"
    if pq.read_metadata(path).num_rows == 0:
        # datasets cannot build a split from an empty file ("corresponds to no data"): an
        # empty validation split (validation_size: 0) is a legitimate choice.
        return Dataset.from_dict({column: [] for column in COLUMNS})
    return Dataset.from_parquet(str(path))


def read_split(tokenized_dir: Path, name: str) -> list[dict]:
    """A split as rows, for evaluation: pyarrow alone, without importing `datasets` (about
    half a second of every evaluation job's start)."""
    import pyarrow.parquet as pq

    return pq.read_table(tokenized_dir / f"{name}.parquet").to_pylist()


def write_empty_splits(out_dir: Path) -> None:
    """The split files of a tokenizer that could not be loaded: the rule's outputs exist, the
    manifest says why they are empty, and every run that needs them reports that reason."""
    from datasets import Dataset

    for name in SPLITS:
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            Dataset.from_dict({k: [] for k in COLUMNS}).to_parquet(str(tmp))
