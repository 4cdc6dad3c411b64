"""Training one run in several processes (resources.distributed.processes): one worker per GPU,
or per CPU process with the gloo backend, started by torch.distributed's elastic launcher (what
torchrun runs) from inside the train step, so the Snakemake rule stays one job per run.

The launcher is called as a library rather than `torchrun ... tunebench stage train ...`:
torchrun's own option parser claims abbreviations of the stage's options (`--run` is ambiguous
with its `--run-path`). Each worker runs the same `train.train_run`; Trainer (through
accelerate) sees RANK/WORLD_SIZE and wraps the model in DistributedDataParallel. The global
batch is training.batch_size whatever the process count (each process takes its share), so a
run's id and its optimisation do not depend on how many processes trained it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def per_process_batch(batch_size: int, processes: int) -> int:
    """Each process's share of the global batch; the split must be even."""
    if batch_size % processes:
        raise ValueError(
            f"training.batch_size {batch_size} does not divide among {processes} processes; "
            "make it a multiple of resources.distributed.processes"
        )
    return batch_size // processes


# auto picks FSDP when one GPU would be fuller than this with a whole copy of the run (the
# estimator's "tight" threshold: allocator fragmentation and workspaces live above it).
FULL_COPY_LIMIT = 0.9


def choose_strategy(run, model_location: str, processes: int) -> tuple[str, str]:
    """resources.distributed.strategy: auto -> (ddp or fsdp, why): DDP while a whole copy of the
    run (the estimator's single-GPU peak) fits one of this node's GPUs, else FSDP."""
    import torch

    if processes < 2:
        return "ddp", "one process"
    if not torch.cuda.is_available():
        return "ddp", "no GPU memory to fit: a whole copy per CPU process is the fastest"
    from tunebench.estimate.runs import estimate_run
    from tunebench.measure import GIB
    from tunebench.train import model_config

    peak = estimate_run(run, model_config(run, model_location), [])["predicted_peak_gb"]
    gpu = torch.cuda.get_device_properties(local_rank()).total_memory / GIB
    why = f"one copy of the run is predicted to need {peak:.1f} GiB of a {gpu:.0f} GiB GPU"
    return ("fsdp" if peak > FULL_COPY_LIMIT * gpu else "ddp"), why


def fsdp_config(cpu_offload: bool) -> dict:
    """Trainer's FSDP2 settings: every decoder layer its own shard unit (the model's
    _no_split_modules), parameters resharded after forward, and sharded checkpoints: each rank
    writes and, on resume, reads only its own shard of the model and optimizer (a torch
    distributed checkpoint), so a checkpoint never gathers the whole model on one process.
    The final model is gathered once, into an ordinary one (full_state_dict_for_saving)."""
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "reshard_after_forward": True,
        "cpu_offload": cpu_offload,
        "state_dict_type": "SHARDED_STATE_DICT",
    }


def full_state_dict_for_saving(trainer) -> None:
    """After training, have Trainer.save_model gather the sharded model into one ordinary
    checkpoint on rank 0 (what PEFT's and TRL's FSDP examples do before saving)."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")


def local_parameters(model) -> int:
    """Parameters held by this process: its shard of each FSDP-sharded (DTensor) parameter."""
    return sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in model.parameters())


def shard_on_cpu(trainer) -> None:
    """Make Trainer's accelerator shard with FSDP2 on CPU processes too. accelerate applies its
    FSDP plugin only to accelerator process groups (AcceleratorState keeps MULTI_CPU as DDP),
    while torch's fully_shard shards a gloo group of CPU processes as it shards NCCL ones: with
    this, `strategy: fsdp` on a CPU trains sharded, the same code path a GPU node takes, rather
    than silently falling back to DDP. Called after Trainer builds its accelerator and before
    train() wraps the model."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if trainer.args.fsdp_plugin_args is None or state.distributed_type != DistributedType.MULTI_CPU:
        return
    # Both singletons: every AcceleratorState() copies PartialState's distributed_type again.
    PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    trainer.is_fsdp_enabled = True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    threads: int,
    run_json: str,
    location: str,
    tokenized: str,
    run_dir: str,
    tracking_json: str,
    sharding: dict | None,
):
    """One process's training (a top-level function: the launcher pickles it)."""
    import torch

    from tunebench import measure
    from tunebench.matrix import RunConfig
    from tunebench.spec import Tracking
    from tunebench.train import train_run

    # accelerate replaces torch's thread count on CPU workers unless OMP_NUM_THREADS is set.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    run = RunConfig.model_validate_json(run_json)
    measured = train_run(
        run,
        location,
        Path(tokenized),
        Path(run_dir),
        Tracking.model_validate_json(tracking_json),
        sharding=sharding,
    )
    # Every rank's own peak (the table shows the largest; the result keeps all).
    return measured | measure.peak_memory()


def launch(
    run,
    location: str,
    tokenized: Path,
    run_dir: Path,
    tracking,
    processes: int,
    threads: int,
    strategy: str = "auto",
    cpu_offload: bool = False,
) -> dict:
    """Train `run` in `processes` local workers with `strategy` (ddp: a full copy per process;
    fsdp: parameters, gradients and optimizer states sharded; auto: choose_strategy). Rank 0's
    measurements, with every rank's peak memory, the world size and the strategy (and why). A
    failed worker raises (the launcher stops the others)."""
    import torch
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise ValueError(
            f"{processes} training processes, one per GPU, but this node has "
            f"{torch.cuda.device_count()} GPUs; ask the job for as many GPUs as processes "
            "(resources.train.gpus) or fewer processes (resources.distributed.processes)"
        )
    why = "resources.distributed.strategy"
    if strategy == "auto":
        strategy, why = choose_strategy(run, location, processes)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        run_id=run.run_id,
        max_restarts=0,
        monitor_interval=1,
    )
    returned = elastic_launch(config, _worker)(
        max(1, threads // processes),
        run.model_dump_json(),
        location,
        str(tokenized),
        str(run_dir),
        tracking.model_dump_json(),
        fsdp_config(cpu_offload) if strategy == "fsdp" else None,
    )
    # elastic_launch returns each worker's value by its rank.
    by_rank = [returned[r] for r in sorted(returned)]
    peaks = [r["peak_memory_gb"] for r in by_rank]
    return by_rank[0] | {
        "world_size": processes,
        "strategy": strategy,
        "strategy_reason": why,
        "peak_memory_gb": max(peaks),
        "peak_memory_gb_per_rank": peaks,
    }
