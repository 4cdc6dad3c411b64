"""One run trained by two processes (gloo on this CPU, the code path GPUs take with NCCL):
the same global batch gives the single-process loss curve; bad settings fail at validation."""

from __future__ import annotations

import pytest
from conftest import tiny_experiment
from test_training import METHODS, run_for, train

from tunebench.experiment import ExperimentError, validate_data

# Two processes each compute their half of the same global batch and average the gradients:
# only the order of floating-point sums differs from one process (measured: 1.3e-4 at most
# over 15 logged losses of the smoke model; 2e-3 leaves room for other CPUs' kernels).
LOSS_AGREEMENT = 2e-3


def losses(result: dict) -> list[float]:
    return [h["loss"] for h in result["log_history"] if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_processes_reproduce_the_single_process_loss_curve(
    method, tiny_model, tiny_data, tmp_path
):
    run = run_for(METHODS[method], max_steps=12, batch_size=8, logging_steps=2)
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    alone = train(run, model_dir, tokenized, tmp_path / "one")
    shared = train(run, model_dir, tokenized, tmp_path / "two", threads=2, processes=2)
    assert alone["status"] == shared["status"] == "ok", shared["reason"]
    assert shared["world_size"] == 2 and shared["strategy"] == "ddp"
    assert len(shared["peak_memory_gb_per_rank"]) == 2
    assert shared["peak_memory_gb"] == max(shared["peak_memory_gb_per_rank"])
    assert shared["steps"] == alone["steps"] == 12
    # Both saw every token of the same batches.
    assert shared["train_tokens"] == alone["train_tokens"]
    assert losses(shared) == pytest.approx(losses(alone), abs=LOSS_AGREEMENT)
    assert (tmp_path / "two" / "model").is_dir()


@pytest.mark.parametrize(
    ("resources", "batch_size", "message"),
    [
        ({"distributed": {"processes": 3}}, 8, "batch_size 8 does not divide among 3"),
        ({"train": {"gpus": 3}}, 8, "batch_size 8 does not divide among 3"),
        ({"distributed": {"strategy": "fsdp"}}, 8, "fsdp shards over two or more"),
    ],
)
def test_distributed_settings_are_checked_at_validation(resources, batch_size, message):
    exp = tiny_experiment(resources=resources)
    exp["training"]["batch_size"] = batch_size
    with pytest.raises(ExperimentError, match=message):
        validate_data(exp)
