"""Shared fixtures: a tiny tokenizer + pre-trained model and a prepared, tokenised dataset,
built once per test session with the same code the workflow runs."""

from __future__ import annotations

import os

# Set before transformers/huggingface_hub are imported anywhere: a hub call must fail at once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tunebench.spec import BuiltinModel, DatasetSpec, ModelSpec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(2)

TINY_BUILTIN = dict(
    hidden_size=32,
    intermediate_size=64,
    layers=2,
    heads=2,
    pretrain_steps=60,
    pretrain_batch_size=16,
    corpus_words=120,
    vocab_size=320,
)


def tiny_experiment(**overrides) -> dict:
    """A small but complete experiment dict; tests change what they need."""
    exp = {
        "name": "tiny",
        "models": [{"name": "m", "builtin": TINY_BUILTIN}],
        "methods": [
            {"method": "full", "learning_rate": 2e-3},
            {"method": "lora", "ranks": [4], "learning_rate": 5e-3},
        ],
        "datasets": [{"name": "words", "builtin": "wordops", "n_words": 120}],
        "training": {"max_steps": 20, "batch_size": 8, "max_length": 64, "logging_steps": 5},
        "evaluation": {"max_new_tokens": 8, "batch_size": 32, "max_examples": 40},
        "cost": {"price_per_hour": {"cpu": 0.5}},
    }
    exp.update(overrides)
    return copy.deepcopy(exp)  # tests change what they get; nothing may leak into the next


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> tuple[ModelSpec, Path]:
    """A built-in model pre-trained for a few steps (saved with its tokenizer)."""
    from tunebench.builtin import wordops
    from tunebench.builtin.pretrain import pretrain
    from tunebench.builtin.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tiny_model")
    spec = ModelSpec(name="m", builtin=BuiltinModel(**TINY_BUILTIN))
    words = wordops.make_lexicon(spec.builtin.corpus_words, seed=0)
    lines = wordops.corpus_lines(words, seed=0)
    tokenizer = train_tokenizer(lines, spec.builtin.vocab_size, root / "tokenizer")
    pretrain(spec.builtin, tokenizer, lines, root / "model", root / "work", seed=0)
    return spec, root / "model"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_model) -> tuple[DatasetSpec, Path, Path]:
    """(spec, prepared dir, tokenised dir) for the built-in task on the tiny model's tokenizer."""
    from tunebench import stages

    root = tmp_path_factory.mktemp("tiny_data")
    spec = DatasetSpec(name="words", builtin="wordops", n_words=120)
    stages.prepare_data(dataset=spec, out=root / "data")
    model, model_dir = tiny_model
    stages.tokenize(
        model=model, dataset=spec, data=root / "data", out=root / "tokenized", model_dir=model_dir
    )
    return spec, root / "data", root / "tokenized"
