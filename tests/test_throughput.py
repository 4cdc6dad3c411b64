"""Throughput settings people expect, each run for real on a CPU: BFD packing and padding-free
batches, the attention implementation, torch.compile, and Liger kernels (GPU only: on a CPU
the run fails at once, naming the key)."""

from __future__ import annotations

import pytest
import torch
from helpers import METHODS, run_for, train
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from tunebench import evaluate
from tunebench.data.tokenize import read_split


def test_packed_examples_do_not_attend_to_each_other(tiny_model, tiny_data):
    """What makes padding-free packing correct with SDPA: a row of several examples whose
    position ids restart gives each example the logits it has alone."""
    spec, model_dir = tiny_model
    _, _, tokenized = tiny_data
    model = evaluate.load_for_eval(spec, str(model_dir), None, None, attention="sdpa")
    examples = [{"input_ids": ex["input_ids"]} for ex in read_split(tokenized, "test")[:3]]
    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[
            0
        ]
        start = 0
        for example in examples:
            alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
            n = len(example["input_ids"])
            torch.testing.assert_close(together[start : start + n], alone, atol=1e-4, rtol=1e-4)
            start += n


@pytest.mark.parametrize(
    "settings", [{"packing": True}, {"padding_free": True}], ids=["packing", "padding_free"]
)
def test_padding_free_training_learns_with_fewer_padded_tokens(
    settings, tiny_model, tiny_data, tmp_path
):
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    # Room for several examples (about 50 tokens each) in one packed row.
    common = {"max_steps": 30, "max_length": 256}
    plain = train(run_for(METHODS["lora"], **common), model_dir, tokenized, tmp_path / "a")
    packed = train(
        run_for(METHODS["lora"], **common, **settings), model_dir, tokenized, tmp_path / "b"
    )
    assert packed["status"] == "ok", packed["reason"]
    assert packed["train_loss_last"] < packed["train_loss_first"]
    per_step = {name: r["train_tokens"] / r["steps"] for name, r in (("a", plain), ("b", packed))}
    if settings.get("packing"):
        # A packed row holds several examples up to max_length: more real tokens per step.
        assert per_step["b"] > 1.5 * per_step["a"]
    else:
        # The same examples per step, with no padding to compute on.
        assert per_step["b"] == pytest.approx(per_step["a"], rel=0.1)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_attention_implementation_is_the_one_asked_for(attention, tiny_model):
    spec, model_dir = tiny_model
    model = evaluate.load_for_eval(spec, str(model_dir), None, None, attention=attention)
    assert model.config._attn_implementation == attention


def test_liger_kernels_on_a_cpu_fail_the_run_naming_the_key(tiny_model, tiny_data, tmp_path):
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    result = train(
        run_for(METHODS["lora"], max_steps=3, liger_kernel=True), model_dir, tokenized, tmp_path
    )
    assert result["status"] == "failed"
    assert "training.liger_kernel needs a CUDA GPU" in result["reason"]


@pytest.mark.slow  # compiling takes about a minute
def test_torch_compile_trains_on_a_cpu(tiny_model, tiny_data, tmp_path):
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    result = train(
        run_for(METHODS["lora"], max_steps=4, logging_steps=2, torch_compile=True),
        model_dir,
        tokenized,
        tmp_path,
    )
    assert result["status"] == "ok", result["reason"]
    assert result["train_loss_last"] < result["train_loss_first"]
