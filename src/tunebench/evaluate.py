"""Rules evaluate and evaluate_base: held-out loss/perplexity (response tokens only, the same
masking as training) and exact match from batched greedy generations, saved as samples; then,
on the same loaded model, the retention sets (retention.py)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from tunebench import metrics, models, retention_scoring
from tunebench.data.templates import cut_at_stop
from tunebench.data.tokenize import REJECTED, read_split
from tunebench.io import read_json, read_jsonl
from tunebench.likelihood import batches, heldout_loss, pad, response_logprobs


@torch.no_grad()
def generate(
    model, tokenizer, examples: list[dict], batch_size: int, max_new_tokens: int, ceiling=None
):
    outputs = []
    device = model.device
    for batch in batches(examples, batch_size, ceiling):
        prompts = [ex["input_ids"][: ex["prompt_length"]] for ex in batch]
        ids = pad(prompts, tokenizer.pad_token_id, left=True).to(device)
        mask = pad([[1] * len(p) for p in prompts], 0, left=True).to(device)
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


def load_for_eval(
    spec,
    base_location: str,
    adapter_dir: Path | None,
    full_dir: Path | None,
    quant=None,
    attention: str = "sdpa",
):
    """The model as it would be used after training: base (+ adapter), or the full fine-tune."""
    dtype = models.training_dtype("auto")
    if full_dir is not None:
        model = models.load_base_model(spec, str(full_dir), dtype, attention=attention)
    else:
        model = models.load_base_model(spec, base_location, dtype, quant, attention)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval()


def load_trained(run, base_location: str, run_dir: Path):
    """A finished run's model: the full fine-tune, or base (4-bit for QLoRA) + its adapter."""
    attention = run.training.attention
    if run.method == "full":
        return load_for_eval(run.model, base_location, None, run_dir / "model", None, attention)
    quant = None
    if run.method == "qlora":
        quant = models.quantization_config(run.quant_type, run.double_quant, run.compute_dtype)
    return load_for_eval(run.model, base_location, run_dir / "model", None, quant, attention)


def multiple_choice_accuracy(
    model, tokenizer, examples: list[dict], records: list[dict], batch_size: int
) -> tuple[dict, list[int]]:
    """Pick the choice with the highest log-likelihood after the prompt (lm-eval's `acc`).
    The prompts are the tokenised test split's, exactly what the loss was measured on."""
    correct, picks = 0, []
    for example, record in zip(examples, records, strict=True):
        prompt_ids = example["input_ids"][: example["prompt_length"]]
        choice_ids = [
            tokenizer(c, add_special_tokens=False)["input_ids"] for c in record["choices"]
        ]
        pairs = [(prompt_ids, c) for c in choice_ids]
        scores = response_logprobs(model, pairs, tokenizer.pad_token_id, batch_size)
        pick = max(range(len(scores)), key=scores.__getitem__)
        picks.append(pick)
        correct += pick == record["answer_index"]
    return {"multiple_choice_accuracy": correct / max(len(records), 1)}, picks


def preference_scores(
    model, examples: list[dict], pad_id: int, batch_size: int, ceiling=None
) -> tuple[dict, list[dict]]:
    """On held-out preference pairs: how often the chosen response is more likely than the
    rejected one (preference_accuracy), and by how much on average (preference_margin: mean
    log p(chosen) - log p(rejected), in nats). A DPO run's implicit reward margin is beta x
    (its margin - its reference's margin): report.py derives it from the two rows."""
    pairs = []
    for ex in examples:
        prompt = ex["input_ids"][: ex["prompt_length"]]
        pairs += [(prompt, ex["input_ids"][ex["prompt_length"] :]), (prompt, ex[REJECTED])]
    logprobs = response_logprobs(model, pairs, pad_id, batch_size, ceiling)
    chosen, rejected = logprobs[0::2], logprobs[1::2]
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    n = max(len(margins), 1)
    scores = {
        "preference_accuracy": sum(m > 0 for m in margins) / n,
        "preference_margin": sum(margins) / n,
    }
    per_example = [
        {"chosen_logprob": c, "rejected_logprob": r, "prefers_chosen": c > r}
        for c, r in zip(chosen, rejected, strict=True)
    ]
    return scores, per_example


def evaluate_model(
    model, tokenizer, data_dir: Path, tokenized_dir: Path, settings, spec, ceiling=None
) -> tuple[dict, list]:
    """Loss/perplexity on response tokens; the dataset's generation and choice metrics."""
    examples = read_split(tokenized_dir, "test")
    if settings.max_examples:
        examples = examples[: settings.max_examples]
    records = {ex["id"]: ex for ex in read_jsonl(data_dir / "test.jsonl")}
    chosen = [records[ex["id"]] for ex in examples]
    wanted = spec.evaluation.metrics
    started = time.perf_counter()
    results = heldout_loss(model, examples, tokenizer.pad_token_id, settings.batch_size, ceiling)
    samples = [
        {"id": ex["id"], "prompt": tokenizer.decode(ex["input_ids"][: ex["prompt_length"]])}
        for ex in examples
    ]
    generation_metrics = [m for m in wanted if m in metrics.GENERATION_METRICS]
    if generation_metrics and chosen and "messages" in chosen[0]:
        template = read_json(tokenized_dir / "manifest.json")["template"]
        raw = generate(
            model, tokenizer, examples, settings.batch_size, settings.max_new_tokens, ceiling
        )
        predictions = [cut_at_stop(p, template) for p in raw]
        references = [r["messages"][-1]["content"] for r in chosen]
        results |= metrics.corpus_scores(
            predictions, references, generation_metrics, spec.evaluation.answer_pattern
        )
        for sample, pred, ref in zip(samples, predictions, references, strict=True):
            sample |= {
                "reference": ref,
                "prediction": pred,
                **metrics.example_scores(
                    pred, ref, generation_metrics, spec.evaluation.answer_pattern
                ),
            }
    if examples and all(ex.get(REJECTED) for ex in examples):  # preference pairs: every row
        scores, per_example = preference_scores(
            model, examples, tokenizer.pad_token_id, settings.batch_size, ceiling
        )
        results |= scores
        for sample, record, scored in zip(samples, chosen, per_example, strict=True):
            sample |= {"rejected": record["rejected"], **scored}
    if metrics.CHOICE_METRIC in wanted:
        if not all("choices" in r for r in chosen):
            raise ValueError(
                "multiple_choice_accuracy needs examples with choices "
                "(datasets[].format: multiple_choice)"
            )
        scores, picks = multiple_choice_accuracy(
            model, tokenizer, examples, chosen, settings.batch_size
        )
        results |= scores
        for sample, record, pick in zip(samples, chosen, picks, strict=True):
            sample |= {
                "choices": record["choices"],
                "answer_index": record["answer_index"],
                "picked_index": pick,
            }
    results |= {"examples": len(examples), "eval_seconds": time.perf_counter() - started}
    return results, samples


def evaluate_trained(
    run,
    base_location: str,
    run_dir: Path,
    data_dir: Path,
    tokenized_dir: Path,
    settings,
    ceiling=None,
) -> tuple[dict, list]:
    """A finished run's model on the held-out split (+ lm-eval tasks if asked for)."""
    tokenizer = models.load_tokenizer(run.model, base_location)
    model = load_trained(run, base_location, run_dir)
    scores, samples = evaluate_model(
        model, tokenizer, data_dir, tokenized_dir, settings, run.dataset, ceiling
    )
    scores |= retention_scoring.score(
        model, tokenizer, run.model, run.dataset, settings.retention, settings.batch_size, ceiling
    )
    del model  # the harness, if asked for, loads its own copy
    full = run.method == "full"
    scores |= _harness(
        settings,
        base_location,
        adapter_dir=None if full else run_dir / "model",
        full_dir=run_dir / "model" if full else None,
    )
    return scores, samples


def _harness(settings, location: str, **trained) -> dict:
    """evaluation.lm_eval's tasks, and evaluation.retention.lm_eval's as retention_lm_eval/..."""
    from tunebench import lm_eval_tasks

    scores = {}
    if settings.lm_eval is not None:
        scores |= lm_eval_tasks.run_tasks(settings.lm_eval, location, **trained)
    tasks = settings.retention.lm_eval if settings.retention.enabled else None
    if tasks is not None:
        found = lm_eval_tasks.run_tasks(tasks, location, **trained)
        scores |= {f"retention_{name}": value for name, value in found.items()}
    return scores


def evaluate_untuned(
    spec,
    dataset,
    location: str,
    data_dir: Path,
    tokenized_dir: Path,
    settings,
    attention: str = "sdpa",
    ceiling=None,
) -> tuple[dict, list]:
    """The untuned base model on the same held-out split, the baseline of every run of it."""
    tokenizer = models.load_tokenizer(spec, location)
    model = load_for_eval(spec, location, None, None, attention=attention)
    scores, samples = evaluate_model(
        model, tokenizer, data_dir, tokenized_dir, settings, dataset, ceiling
    )
    scores |= retention_scoring.score(
        model, tokenizer, spec, dataset, settings.retention, settings.batch_size, ceiling
    )
    del model
    return scores | _harness(settings, location), samples
