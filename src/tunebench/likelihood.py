"""What a model gives held-out text: the mean loss over response tokens, and the log-probability
of a response after its prompt, in batches under the memory ceiling. Used by the evaluation
(evaluate.py) and the retention sets (retention_scoring.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def batches(items: list, size: int, ceiling=None):
    """Batches of `items`; after each one the memory ceiling (if any) is checked."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
        if ceiling is not None:
            ceiling.check(f"evaluation batch {start // size + 1}")


def pad(seqs: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = [
        ([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in seqs
    ]
    return torch.tensor(rows)


@torch.no_grad()
def heldout_loss(model, examples: list[dict], pad_id: int, batch_size: int, ceiling=None) -> dict:
    """Token-weighted mean cross-entropy over response tokens, and its perplexity."""
    total, count = 0.0, 0
    device = model.device
    for batch in batches(examples, batch_size, ceiling):
        ids = pad([ex["input_ids"] for ex in batch], pad_id, left=False).to(device)
        mask = pad([[1] * len(ex["input_ids"]) for ex in batch], 0, left=False).to(device)
        loss_mask = pad([ex["completion_mask"] for ex in batch], 0, left=False).to(device)
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
def response_logprobs(
    model, pairs: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int, ceiling=None
) -> list[float]:
    """log p(response | prompt) of each (prompt ids, response ids): the sum over the response's
    tokens, as DPO's implicit reward and lm-eval's `acc` use it."""
    scores = []
    device = model.device
    for batch in batches(pairs, batch_size, ceiling):
        seqs = [prompt + response for prompt, response in batch]
        ids = pad(seqs, pad_id, left=False).to(device)
        mask = pad([[1] * len(q) for q in seqs], 0, left=False).to(device)
        logprobs = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logprobs = logprobs.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
        for row, (prompt, response) in zip(logprobs, batch, strict=True):
            start = len(prompt) - 1  # logits at t predict token t + 1
            scores.append(row[start : start + len(response)].sum().item())
    return scores
