"""What a run trained in several processes needs inside each process: its rank, its share of
the batch, the FSDP settings and sharding on CPU processes, what it holds, and the ranks'
measurements combined into one result. The launcher that starts the processes is launch.py
(it calls training, which calls these: kept apart, the imports have no circle)."""

from __future__ import annotations

import os


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


def _local(tensor):
    """This process's part of a tensor: its shard of an FSDP-sharded (DTensor) one."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def model_state_gb(trainer) -> float:
    """GiB of model state this process holds after training: parameters, gradients and
    optimizer states (its shards under FSDP, whole under DDP). Measured from the tensors: on a
    CPU the process's peak RSS also holds activations, logits and allocator slack, which hide
    what sharding saves."""
    from tunebench.measure import GIB

    params = [_local(p) for p in trainer.model_wrapped.parameters()]
    grads = [_local(p.grad) for p in trainer.model_wrapped.parameters() if p.grad is not None]
    states = [
        _local(v)
        for state in trainer.optimizer.state.values()
        for v in state.values()
        if hasattr(v, "element_size")
    ]
    return sum(t.numel() * t.element_size() for t in params + grads + states) / GIB


def local_parameters(model) -> int:
    """Parameters held by this process: its shard of each FSDP-sharded (DTensor) parameter."""
    return sum(_local(p).numel() for p in model.parameters())


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


def combine_ranks(by_rank: list[dict], strategy: str, why: str, nodes: int = 1) -> dict:
    """Rank 0's measurements with every rank's peak memory, the world size and the strategy;
    billed hours count every GPU that trained (CPU processes: every machine)."""
    import torch

    peaks = [r["peak_memory_gb"] for r in by_rank]
    billed = len(by_rank) if torch.cuda.is_available() else nodes
    return by_rank[0] | {
        "accelerator_hours": by_rank[0]["train_seconds"] / 3600 * billed,
        "world_size": len(by_rank),
        "strategy": strategy,
        "strategy_reason": why,
        "peak_memory_gb": max(peaks),
        "peak_memory_gb_per_rank": peaks,
        "node_per_rank": [r["node"] for r in by_rank],
        "model_state_gb_per_rank": [r["model_state_gb"] for r in by_rank],
    }
