"""Rules evaluate and evaluate_base: held-out loss/perplexity (response tokens only, the same
masking as training) and exact match from batched greedy generations, saved as samples."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tunebench import measure, models
from tunebench.data.prepare import normalised
from tunebench.data.tokenize import TokenizedUnavailable, load_split
from tunebench.io import read_json, read_jsonl, write_json, write_jsonl


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pad(seqs: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = [
        ([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in seqs
    ]
    return torch.tensor(rows)


@torch.no_grad()
def heldout_loss(model, examples: list[dict], pad_id: int, batch_size: int) -> dict:
    """Token-weighted mean cross-entropy over response tokens, and its perplexity."""
    total, count = 0.0, 0
    device = model.device
    for batch in _batches(examples, batch_size):
        ids = _pad([ex["input_ids"] for ex in batch], pad_id, left=False).to(device)
        mask = _pad([[1] * len(ex["input_ids"]) for ex in batch], 0, left=False).to(device)
        loss_mask = _pad([ex["completion_mask"] for ex in batch], 0, left=False).to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = ids[:, 1:].masked_fill(loss_mask[:, 1:] == 0, -100)
        total += F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        ).item()
        count += int((targets != -100).sum())
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50)), "loss_tokens": count}


@torch.no_grad()
def generate(model, tokenizer, examples: list[dict], batch_size: int, max_new_tokens: int):
    outputs = []
    device = model.device
    for batch in _batches(examples, batch_size):
        prompts = [ex["input_ids"][: ex["prompt_length"]] for ex in batch]
        ids = _pad(prompts, tokenizer.pad_token_id, left=True).to(device)
        mask = _pad([[1] * len(p) for p in prompts], 0, left=True).to(device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        outputs += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    return [o.strip() for o in outputs]


def score(predictions: list[str], references: list[str]) -> dict:
    n = max(len(references), 1)
    return {
        "exact_match": sum(p == r.strip() for p, r in zip(predictions, references, strict=True))
        / n,
        "exact_match_normalised": sum(
            normalised(p) == normalised(r) for p, r in zip(predictions, references, strict=True)
        )
        / n,
    }


def load_for_eval(
    spec, base_location: str, adapter_dir: Path | None, full_dir: Path | None, quant=None
):
    """The model as it would be used after training: base (+ adapter), or the full fine-tune."""
    dtype = models.training_dtype("auto")
    if full_dir is not None:
        model = models.load_base_model(spec, str(full_dir), dtype)
    else:
        model = models.load_base_model(spec, base_location, dtype, quant)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval()


def load_trained(run, base_location: str, run_dir: Path):
    """A finished run's model: the full fine-tune, or base (4-bit for QLoRA) + its adapter."""
    if run.method == "full":
        return load_for_eval(run.model, base_location, None, run_dir / "model")
    quant = None
    if run.method == "qlora":
        quant = models.quantization_config(run.quant_type, run.double_quant, run.compute_dtype)
    return load_for_eval(run.model, base_location, run_dir / "model", None, quant)


def evaluate_model(
    model, tokenizer, data_dir: Path, tokenized_dir: Path, settings
) -> tuple[dict, list]:
    examples = load_split(tokenized_dir, "test").to_list()
    if settings.max_examples:
        examples = examples[: settings.max_examples]
    references = {
        ex["id"]: ex["messages"][-1]["content"] for ex in read_jsonl(data_dir / "test.jsonl")
    }
    refs = [references[ex["id"]] for ex in examples]
    started = time.perf_counter()
    loss = heldout_loss(model, examples, tokenizer.pad_token_id, settings.batch_size)
    predictions = generate(model, tokenizer, examples, settings.batch_size, settings.max_new_tokens)
    metrics = {
        **loss,
        **score(predictions, refs),
        "examples": len(examples),
        "eval_seconds": time.perf_counter() - started,
    }
    samples = [
        {
            "id": ex["id"],
            "prompt": tokenizer.decode(ex["input_ids"][: ex["prompt_length"]]),
            "reference": ref,
            "prediction": pred,
            "exact_match": pred == ref.strip(),
        }
        for ex, ref, pred in zip(examples, refs, predictions, strict=True)
    ]
    return metrics, samples


class SkipEvaluation(RuntimeError):
    """Nothing to evaluate (training failed); recorded as status `skipped`."""


def record(result_path: Path, samples_path: Path, identity: dict, data_dir: Path, run) -> dict:
    """Run `run()` -> (metrics, samples), and always write a result file."""
    test_sha = read_json(data_dir / "manifest.json")["test_sha256"]
    try:
        metrics, samples = run()
        outcome = {"status": "ok", "reason": "", **metrics}
    except SkipEvaluation as err:
        outcome, samples = {"status": "skipped", "reason": str(err)}, []
    except TokenizedUnavailable as err:
        outcome, samples = {"status": err.status, "reason": str(err)}, []
    except Exception as err:  # an evaluation failure is a row too
        import traceback

        traceback.print_exc()
        outcome = {"status": "failed", "reason": f"{type(err).__name__}: {err}".splitlines()[0]}
        samples = []
    write_jsonl(samples_path, samples)
    result = {
        **identity,
        **outcome,
        "test_sha256": test_sha,
        **measure.peak_memory(),
        "provenance": measure.provenance(),
    }
    write_json(result_path, result)
    return result
