"""One run trained by two processes (gloo on this CPU, the code path GPUs take with NCCL), as
DDP (a whole copy each) and as FSDP2 (sharded): the same global batch gives the single-process
loss curve, a killed run resumes from its (sharded) checkpoint; bad settings fail at
validation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, tiny_experiment
from helpers import METHODS, run_for, train, train_command

from tunebench.experiment import ExperimentError, validate_data

# Two processes each compute their half of the same global batch and average the gradients:
# only the order of floating-point sums differs from one process (measured on the AMD EPYC
# machine, 6 logged losses of the smoke model: DDP 1.3e-4 at most, FSDP 4.8e-7; 2e-3 leaves
# room for other CPUs' kernels).
LOSS_AGREEMENT = 2e-3


def losses(result: dict) -> list[float]:
    return [h["loss"] for h in result["log_history"] if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "strategy"),
    # QLoRA shards its 4-bit weights stored in the compute dtype (bnb_4bit_quant_storage):
    # measured 3.9e-4 at most from one process, the rest below 1e-6.
    [("full", "auto"), ("lora", "auto"), ("full", "fsdp"), ("lora", "fsdp")]
    + [("dora", "fsdp"), ("qlora", "fsdp")],
)
def test_two_processes_reproduce_the_single_process_loss_curve(
    method, strategy, tiny_model, tiny_data, tmp_path, capfd
):
    run = run_for(METHODS[method], max_steps=12, batch_size=8, logging_steps=2)
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    alone = train(run, model_dir, tokenized, tmp_path / "one")
    shared = train(
        run, model_dir, tokenized, tmp_path / "two", threads=2, processes=2, strategy=strategy
    )
    assert alone["status"] == shared["status"] == "ok", shared["reason"]
    assert shared["world_size"] == 2
    if strategy == "auto":  # on a CPU: a whole copy per process
        assert shared["strategy"] == "ddp" and shared["strategy_reason"].startswith("no GPU")
    else:
        assert shared["strategy"] == "fsdp"
    # FSDP: each rank holds half of the parameters and optimizer states (shards are padded
    # to equal sizes, and the tied embedding is one parameter); DDP: a whole copy each.
    whole = alone["model_state_gb"]
    share = 0.5 if strategy == "fsdp" else 1.0
    assert shared["model_state_gb_per_rank"] == pytest.approx([share * whole] * 2, rel=0.1)
    # Which wrapper each worker trained (their log lines): FSDP really sharded on gloo.
    wrapper = "FSDP" if strategy == "fsdp" else "DistributedDataParallel"
    assert f"rank 1 of 2 trained {wrapper}" in capfd.readouterr().err
    assert len(shared["peak_memory_gb_per_rank"]) == 2
    assert shared["peak_memory_gb"] == max(shared["peak_memory_gb_per_rank"])
    assert shared["steps"] == alone["steps"] == 12
    # Both saw every token of the same batches.
    assert shared["train_tokens"] == alone["train_tokens"]
    assert losses(shared) == pytest.approx(losses(alone), abs=LOSS_AGREEMENT)
    assert (tmp_path / "two" / "model").is_dir()


UNSLOTH_LORA = {"method": "lora", "ranks": [4], "backend": "unsloth", "learning_rate": 1e-3}


@pytest.mark.parametrize(
    ("resources", "methods", "message"),
    [
        ({"distributed": {"processes": 3}}, None, "batch_size 8 does not divide among 3"),
        ({"train": {"gpus": 3}}, None, "batch_size 8 does not divide among 3"),
        ({"distributed": {"strategy": "fsdp"}}, None, "fsdp shards over two or more"),
        ({"distributed": {"processes": 2}}, [UNSLOTH_LORA], "backend unsloth, which trains"),
        ({"train": {"gpus": 3, "nodes": 2}}, None, "do not spread evenly over 2 nodes"),
        ({"train": {"nodes": 2}}, None, "1 GPUs .training processes. do not spread evenly"),
        ({"evaluate": {"nodes": 2}}, None, "evaluate.nodes: only training spans nodes"),
    ],
)
def test_distributed_settings_are_checked_at_validation(resources, methods, message):
    exp = tiny_experiment(resources=resources)
    exp["training"]["batch_size"] = 8
    if methods:
        exp["methods"] = methods
    with pytest.raises(ExperimentError, match=message):
        validate_data(exp)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_killed_two_process_run_resumes_from_its_checkpoint_and_ends_the_same(
    strategy, tiny_model, tiny_data, tmp_path
):
    """The whole job killed at once, as Slurm kills a job's processes: the launcher and both
    workers. Rerun with two processes, it resumes from its checkpoint (DDP: rank 0's copy;
    FSDP: each rank's own shard of model and optimizer; with each rank's RNG state) and ends
    where an uninterrupted run ends."""
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["lora"], max_steps=120, batch_size=8, save_steps=20, logging_steps=10)
    options = {"threads": 2, "processes": 2, "strategy": strategy}
    whole = train(run, model_dir, tokenized, tmp_path / "whole", **options)
    assert whole["status"] == "ok", whole["reason"]

    killed = tmp_path / "killed"
    command = train_command(
        run, model_dir, tokenized, killed, "--threads=2", "--processes=2", f"--strategy={strategy}"
    )
    job = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    first_checkpoint = killed / "checkpoints" / "checkpoint-20" / "trainer_state.json"
    deadline = time.time() + 180
    while not first_checkpoint.is_file() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert first_checkpoint.is_file()
    assert not (killed / "result.json").exists()
    if strategy == "fsdp":  # a torch distributed checkpoint: a file per rank, no gathered copy
        shards = first_checkpoint.parent / "pytorch_model_fsdp_0"
        assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    resumed = train(run, model_dir, tokenized, killed, **options)
    assert resumed["status"] == "ok", resumed["reason"]
    assert resumed["resumed_from_step"] >= 20 and resumed["steps"] == 120
    assert resumed["world_size"] == 2
    assert resumed["train_loss_last"] == pytest.approx(whole["train_loss_last"], rel=1e-4)
    assert resumed["validation_loss"] == pytest.approx(whole["validation_loss"], rel=1e-4)


@pytest.mark.parametrize(("gpu_gib", "expected"), [(80, "ddp"), (0.001, "fsdp")])
def test_auto_shards_a_run_whose_whole_copy_would_not_fit_one_gpu(
    gpu_gib, expected, tiny_model, monkeypatch
):
    """The decision auto makes on a GPU node, from the estimator's real single-GPU prediction;
    only the node's GPU (absent here) is stood in for."""
    import types

    import torch

    from tunebench.training.launch import choose_strategy

    _, model_dir = tiny_model
    run = run_for(METHODS["full"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda _: types.SimpleNamespace(total_memory=int(gpu_gib * 1024**3)),
    )
    strategy, why = choose_strategy(run, str(model_dir), processes=2)
    assert strategy == expected and "predicted to need" in why
    assert choose_strategy(run, str(model_dir), processes=1)[0] == "ddp"


def test_a_run_spanning_nodes_needs_slurm(tiny_model, tiny_data, tmp_path, monkeypatch):
    """Refused before anything starts by `tunebench run` without the Slurm executor, and, for a
    train step started some other way, a failed row that names the key."""
    from tunebench.orchestrate import check_executor

    exp = validate_data(tiny_experiment(resources={"train": {"gpus": 2, "nodes": 2}}))
    for profile, extra in [(None, []), (None, ["--executor", "local"])]:
        with pytest.raises(ExperimentError, match="spans nodes only as a Slurm job"):
            check_executor(exp, profile, extra)
    check_executor(exp, "slurm", [])
    check_executor(exp, None, ["--executor=slurm"])

    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["lora"], max_steps=2)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # as on a workstation
    result = train(run, model_dir, tokenized, tmp_path, processes=2, nodes=2)
    assert result["status"] == "failed"
    assert "resources.train.nodes: 2: a run spans nodes only inside a Slurm job" in result["reason"]


SEVENTY_B = REPO / "experiments" / "examples" / "llama-2-70b-full-two-nodes.yaml"


def test_the_70b_recipe_is_one_training_job_over_two_nodes(tmp_path):
    """The 70B example of docs/slurm.md: one copy of the run fits no 80 GB GPU (so it must
    shard), and the workflow plans its training as the job that spans nodes, with the Slurm
    requests that put 8 GPUs and one task on each node."""
    import json

    from tunebench.experiment import load_experiment
    from tunebench.orchestrate import snakemake_command

    exp = load_experiment(SEVENTY_B)
    assert exp.resources.spans_nodes() and exp.resources.training_processes() == 16
    estimate = subprocess.run(
        [sys.executable, "-m", "tunebench", "estimate", str(SEVENTY_B), "--gpu", "H100", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert estimate.returncode == 0, estimate.stderr
    (run,) = json.loads(estimate.stdout)["runs"]
    assert run["gpus"]["H100"]["verdict"] == "does not fit" and run["predicted_peak_gb"] > 8 * 80

    (tmp_path / "data").mkdir()
    rows = [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(40)]
    (tmp_path / "data" / "my_task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = subprocess.run(
        [*snakemake_command(str(SEVENTY_B), None, []), "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plan.returncode == 0, plan.stderr[-3000:]
    job = plan.stdout.split("rule train_across_nodes:")[1].split("\n[")[0]
    for request in ("nodes=2", "tasks=2", "tasks_per_gpu=0", "mpi=srun", "gres=gpu:h100:8"):
        assert request in job, job
    assert "rule train:" not in plan.stdout  # not also as an ordinary, one-node job


def test_a_distributed_result_bills_every_gpu_and_shows_the_fullest_rank(monkeypatch):
    """Four ranks on two nodes: rank 0's measurements, the largest peak for the table, and
    hours for all four GPUs (on CPUs: for both machines)."""
    import torch

    from tunebench.training.distributed import combine_ranks

    ranks = [
        {"train_seconds": 3600.0, "peak_memory_gb": peak, "node": node, "model_state_gb": 0.5}
        for peak, node in [(10.0, "a"), (12.0, "a"), (11.0, "b"), (9.0, "b")]
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpus = combine_ranks(ranks, "fsdp", "resources.distributed.strategy", nodes=2)
    assert on_gpus["world_size"] == 4 and on_gpus["accelerator_hours"] == 4.0
    assert on_gpus["peak_memory_gb"] == 12.0 and on_gpus["peak_memory_gb_per_rank"][0] == 10.0
    assert on_gpus["node_per_rank"] == ["a", "a", "b", "b"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert combine_ranks(ranks, "fsdp", "", nodes=2)["accelerator_hours"] == 2.0
