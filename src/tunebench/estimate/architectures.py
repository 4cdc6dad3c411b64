"""Configurations of well-known hub models, so that an estimate needs no hub access.

architectures.csv holds the fields that set sizes (and the few others transformers needs to
build the model), keyed by hub id, each row with the file it was read from. It is the same
table the accuracy benchmark predicts its published measurements with
(benchmarks/estimator_accuracy.py).
"""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("architectures.csv")
INTEGERS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
)


@cache
def known() -> dict[str, dict]:
    """hub id -> {"fields": config fields incl. model_type, "source": where they were read}."""
    table = {}
    for row in csv.DictReader(TABLE.open()):
        fields = {"model_type": row["model_type"], **{k: int(row[k]) for k in INTEGERS}}
        fields["tie_word_embeddings"] = row["tie_word_embeddings"] == "true"
        fields |= json.loads(row["extra"]) if row["extra"] else {}
        table[row["hub_id"]] = {"fields": fields, "source": row["source_location"]}
    return table


def config_from_fields(model_type: str, **fields):
    """A transformers configuration built from its fields (no file, no download)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **fields)


def config(hub_id: str):
    """The transformers configuration of a known hub model (KeyError if not in the table)."""
    return config_from_fields(**known()[hub_id]["fields"])
