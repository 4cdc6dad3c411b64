"""Real training of every method on a tiny model: the held-out loss must drop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import METHODS, run_for, train

from tunebench import evaluate, models
from tunebench.data.tokenize import load_split
from tunebench.io import read_json
from tunebench.spec import Tracking


def test_examples(tokenized: Path, n: int = 48) -> list[dict]:
    return load_split(tokenized, "test").to_list()[:n]


test_examples.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("method", sorted(METHODS))
def test_training_lowers_heldout_loss(method, tiny_model, tiny_data, tmp_path):
    spec, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS[method], max_steps=40)
    examples = test_examples(tokenized)
    base = evaluate.load_for_eval(spec, str(model_dir), None, None)
    pad = models.load_tokenizer(spec, str(model_dir)).pad_token_id
    before = evaluate.heldout_loss(base, examples, pad, 16)["loss"]

    result = train(run, model_dir, tokenized, tmp_path, threads=2)
    assert result["status"] == "ok", result["reason"]
    assert read_json(tmp_path / "result.json")["run_id"] == run.run_id
    trained = evaluate.load_trained(run, str(model_dir), tmp_path)
    after = evaluate.heldout_loss(trained, examples, pad, 16)["loss"]
    print(f"{method}: held-out loss {before:.3f} -> {after:.3f}")
    assert before - after > 0.2, f"{method}: held-out loss {before:.3f} -> {after:.3f}"

    # What the run records about itself.
    assert 0 < result["trainable_params"] <= result["total_params"]
    if method == "full":
        assert result["trainable_params"] == result["total_params"]
    else:
        assert result["trainable_params"] < 0.5 * result["total_params"]
    assert result["train_seconds"] > 0 and result["tokens_per_second"] > 0
    assert result["memory_kind"] == "cpu_peak_rss" and result["peak_memory_gb"] > 0.1
    assert result["steps"] == 40
    # The estimate beside the measurement: GPU memory predicted, no error on a CPU run.
    assert result["prediction"]["predicted_peak_gb"] > 0, result["prediction"]
    assert result["prediction"]["mfu"] is None
    assert result["provenance"]["packages"]["transformers"]
    assert len(result["provenance"]["git"]["commit"]) in (40, len("unknown"))


def _linear4bit_passes_input_grad(after_eval: bool, workaround: bool) -> bool:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.load_state_dict(torch.nn.Linear(64, 64, bias=False).state_dict())
    layer = layer.to("cpu")
    if workaround:
        layer.support_avx512bf16_for_cpu = False
    x = torch.randn(4, 64)
    if after_eval:
        layer.eval()
        with torch.no_grad():
            layer(x)
        layer.train()
    x.requires_grad_(True)
    layer(x).sum().backward()
    return x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_4bit_layer_passes_gradients_after_eval_with_the_workaround():
    assert _linear4bit_passes_input_grad(after_eval=False, workaround=True)
    assert _linear4bit_passes_input_grad(after_eval=True, workaround=True)


def test_qlora_still_learns_after_an_evaluation_pass(tiny_model, tiny_data):
    """The bitsandbytes CPU repacking bug (models.py: on CPUs with AVX512-BF16 the first
    eval-mode forward repacks a Linear4bit's weight for inference) stops gradients after it.
    Evaluate first, then train: the held-out loss must still drop and gradients must reach the
    first layer's adapter through the 4-bit layers above it."""
    from peft import get_peft_model

    spec, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["qlora"])
    quant = models.quantization_config("nf4", True, "float32")
    model = models.load_base_model(spec, str(model_dir), torch.float32, quant)
    model, peft_config = models.prepare_for_method(run, model, gradient_checkpointing=False)
    model = get_peft_model(model, peft_config)
    pad = models.load_tokenizer(spec, str(model_dir)).pad_token_id
    examples = test_examples(tokenized)
    model.eval()
    before = evaluate.heldout_loss(model, examples, pad, 16)["loss"]  # the eval pass

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train = load_split(tokenized, "train").to_list()
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    for step in range(40):
        batch = train[(step * 8) % len(train) :][:8]
        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.tensor(
            [ex["input_ids"] + [pad] * (width - len(ex["input_ids"])) for ex in batch]
        )
        labels = torch.tensor(
            [
                [
                    t if m else -100
                    for t, m in zip(ex["input_ids"], ex["completion_mask"], strict=True)
                ]
                + [-100] * (width - len(ex["input_ids"]))
                for ex in batch
            ]
        )
        loss = model(input_ids=ids, attention_mask=(ids != pad).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        # B starts at zero, so A's gradient is zero on the first step by construction.
        lora = q_proj.lora_B if step == 0 else q_proj.lora_A
        if step < 2:
            grad = lora["default"].weight.grad
            assert grad is not None and grad.abs().sum() > 0, f"no gradient at step {step}"
        optimizer.step()
    model.eval()
    after = evaluate.heldout_loss(model, examples, pad, 16)["loss"]
    assert before - after > 0.2, f"QLoRA after an eval pass: {before:.3f} -> {after:.3f}"


def test_failed_training_is_a_result_not_a_crash(tiny_model, tiny_data, tmp_path):
    spec, _ = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["lora"])
    result = train(run, tmp_path / "no-such-model", tokenized, tmp_path)
    assert result["status"] == "missing_model"
    assert "no config.json" in result["reason"]
    assert read_json(tmp_path / "result.json")["status"] == "missing_model"


@pytest.mark.skipif(
    "avx512_bf16" not in Path("/proc/cpuinfo").read_text(),
    reason="the bitsandbytes repacking bug needs a CPU with AVX512-BF16",
)
def test_without_the_workaround_this_cpu_loses_gradients():
    """Proves the test above can fail here: the bug is real on this CPU."""
    assert not _linear4bit_passes_input_grad(after_eval=True, workaround=False)


def test_wandb_tracks_offline_without_a_key(tiny_model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["lora"], max_steps=4)
    result = train(
        run, model_dir, tokenized, tmp_path, Tracking(wandb=True, project="tunebench-test")
    )
    assert result["status"] == "ok", result["reason"]
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1


def test_multiple_choice_picks_the_most_likely_choice(tiny_model):
    """Batched scoring agrees with a plain one-sequence-at-a-time log-likelihood."""
    spec, model_dir = tiny_model
    tokenizer = models.load_tokenizer(spec, str(model_dir))
    model = evaluate.load_for_eval(spec, str(model_dir), None, None)
    records, examples = [], []
    for word, answer in (("k a t o", 0), ("b e s u", 1), ("l i r", 2)):
        prompt = tokenizer(f"the word {word} starts with", add_special_tokens=False)["input_ids"]
        examples.append({"input_ids": prompt, "prompt_length": len(prompt)})
        records.append({"choices": [" k", " b e", " l i r ."], "answer_index": answer})
    scores, picks = evaluate.multiple_choice_accuracy(model, tokenizer, examples, records, 2)

    def loglik(prompt: list[int], choice: str) -> float:
        ids = prompt + tokenizer(choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        return sum(logp[t - 1, ids[t]].item() for t in range(len(prompt), len(ids)))

    expected = [
        max(range(3), key=lambda i: loglik(ex["input_ids"], r["choices"][i]))
        for ex, r in zip(examples, records, strict=True)
    ]
    assert picks == expected
    right = sum(p == r["answer_index"] for p, r in zip(picks, records, strict=True))
    assert scores["multiple_choice_accuracy"] == pytest.approx(right / 3)
