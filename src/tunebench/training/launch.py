"""Training one run in several processes (resources.distributed.processes): one worker per GPU,
or per CPU process with the gloo backend, started by torch.distributed's elastic launcher (what
torchrun runs) from inside the train step, so the Snakemake rule stays one job per run. A run
whose job spans nodes (resources.train.nodes, Slurm only) starts one launcher per node with
srun; the launchers meet at a c10d rendezvous on the job's first node (launch_across_nodes).

The launcher is called as a library rather than `torchrun ... tunebench stage train ...`:
torchrun's own option parser claims abbreviations of the stage's options (`--run` is ambiguous
with its `--run-path`). Each worker runs the same `train.train_run`; Trainer (through
accelerate) sees RANK/WORLD_SIZE and wraps the model in DistributedDataParallel. The global
batch is training.batch_size whatever the process count (each process takes its share), so a
run's id and its optimisation do not depend on how many processes trained it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from tunebench.training.distributed import combine_ranks, fsdp_config, local_rank

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
    from tunebench.estimate.runs import estimate_at
    from tunebench.measure import GIB

    peak = estimate_at(run, model_location)["predicted_peak_gb"]
    gpu = torch.cuda.get_device_properties(local_rank()).total_memory / GIB
    why = f"one copy of the run is predicted to need {peak:.1f} GiB of a {gpu:.0f} GiB GPU"
    return ("fsdp" if peak > FULL_COPY_LIMIT * gpu else "ddp"), why


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
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
    from tunebench.training.train import train_run

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
    # Every rank's own peak (the table shows the largest; the result keeps all), and where.
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    return measured | measure.peak_memory() | {"node": node}


def _check_gpus(processes: int) -> None:
    """One process per GPU of this node."""
    import torch

    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise ValueError(
            f"{processes} training processes on this node, one per GPU, but it has "
            f"{torch.cuda.device_count()} GPUs; ask the job for as many GPUs as processes "
            "(resources.train.gpus) or fewer processes (resources.distributed.processes)"
        )


def _worker_arguments(run, location, tokenized, run_dir, tracking, strategy, cpu_offload) -> list:
    """What every worker of the run is given (after its thread count), as plain values."""
    return [
        run.model_dump_json(),
        location,
        str(tokenized),
        str(run_dir),
        tracking.model_dump_json(),
        fsdp_config(cpu_offload) if strategy == "fsdp" else None,
    ]


def _launch_config(nodes: int, processes_per_node: int, endpoint: str, rendezvous: str):
    """torch's elastic launcher for a fixed number of nodes, meeting at a c10d `endpoint`;
    no restarts: a failed worker fails the step (Snakemake and Slurm retry it, resuming)."""
    from torch.distributed.launcher.api import LaunchConfig

    return LaunchConfig(
        min_nodes=nodes,
        max_nodes=nodes,
        nproc_per_node=processes_per_node,
        rdzv_backend="c10d",
        rdzv_endpoint=endpoint,
        run_id=rendezvous,
        max_restarts=0,
        monitor_interval=1,
    )


def _strategy(run, location: str, processes: int, strategy: str) -> tuple[str, str]:
    if strategy == "auto":
        return choose_strategy(run, location, processes)
    return strategy, "resources.distributed.strategy"


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
    nodes: int = 1,
) -> dict:
    """Train `run` in `processes` workers with `strategy` (ddp: a full copy per process; fsdp:
    parameters, gradients and optimizer states sharded; auto: choose_strategy), on this node
    or, with `nodes` > 1, spread over that many nodes of this Slurm job (launch_across_nodes).
    Rank 0's measurements, with every rank's peak memory, the world size and the strategy (and
    why). A failed worker raises (the launcher stops the others)."""
    if nodes > 1:
        return launch_across_nodes(
            run,
            location,
            tokenized,
            run_dir,
            tracking,
            nodes,
            processes,
            threads,
            strategy,
            cpu_offload,
        )
    from torch.distributed.launcher.api import elastic_launch

    _check_gpus(processes)
    strategy, why = _strategy(run, location, processes, strategy)
    config = _launch_config(1, processes, f"127.0.0.1:{_free_port()}", run.run_id)
    returned = elastic_launch(config, _worker)(
        max(1, threads // processes),
        *_worker_arguments(run, location, tokenized, run_dir, tracking, strategy, cpu_offload),
    )
    # elastic_launch returns each worker's value by its rank.
    return combine_ranks([returned[r] for r in sorted(returned)], strategy, why)


# Where each rank of a run spanning nodes leaves its measurements for the first node to read
# (the run folder is on the cluster's shared file system, as every job's outputs are).
RANKS = "ranks"


LAUNCH = "launch.json"


def launch_across_nodes(
    run,
    location: str,
    tokenized: Path,
    run_dir: Path,
    tracking,
    nodes: int,
    processes: int,
    threads: int,
    strategy: str = "auto",
    cpu_offload: bool = False,
) -> dict:
    """Train `run` on `nodes` nodes of this Slurm job, `processes` workers in all: srun starts
    one task per node (`tunebench stage train-node`), each an elastic launcher for its node's
    processes / nodes workers; they meet at a c10d rendezvous on this, the job's first, node.
    Then as launch(): rank 0's measurements with every rank's peak memory. A failed task
    fails the step (srun --kill-on-bad-exit stops the others)."""
    if not os.environ.get("SLURM_JOB_ID"):
        raise ValueError(
            f"resources.train.nodes: {nodes}: a run spans nodes only inside a Slurm job; run "
            "the experiment with --profile slurm, or train on one node (remove nodes)"
        )
    if processes % nodes:
        raise ValueError(
            f"{processes} training processes do not spread evenly over {nodes} nodes "
            "(resources.train.gpus / resources.train.nodes)"
        )
    strategy, why = _strategy(run, location, processes, strategy)
    ranks = run_dir / RANKS
    shutil.rmtree(ranks, ignore_errors=True)  # an earlier attempt's, not this one's
    ranks.mkdir(parents=True)
    plan = {
        "nodes": nodes,
        "processes_per_node": processes // nodes,
        "threads": threads,
        # The first node's name as the other nodes resolve it (Slurm's node names are
        # resolvable host names on a cluster).
        "endpoint": f"{socket.gethostname()}:{_free_port('')}",
        "rendezvous": f"{run.run_id}-{os.environ['SLURM_JOB_ID']}",
        "worker": _worker_arguments(
            run, location, tokenized, run_dir, tracking, strategy, cpu_offload
        ),
    }
    (run_dir / LAUNCH).write_text(json.dumps(plan, indent=1))
    command = [
        "srun",
        f"--nodes={nodes}",
        f"--ntasks={nodes}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        sys.executable,
        "-m",
        "tunebench",
        "stage",
        "train-node",
        f"--launch={run_dir / LAUNCH}",
    ]
    done = subprocess.run(command)
    if done.returncode:
        raise RuntimeError(
            f"the training tasks on {nodes} nodes failed (srun exited {done.returncode}); "
            "their output is in this log above"
        )
    by_rank = [json.loads(f.read_text()) for f in sorted(ranks.glob("rank-*.json"), key=_rank)]
    if len(by_rank) != processes:
        raise RuntimeError(f"{len(by_rank)} of {processes} ranks reported in {ranks}")
    return combine_ranks(by_rank, strategy, why, nodes)


def _rank(path: Path) -> int:
    return int(path.stem.split("-")[1])


def launch_node(launch_file: Path) -> None:
    """One node's part of launch_across_nodes: its workers, through the rendezvous; each rank's
    measurements written to the run folder's ranks/."""
    from torch.distributed.launcher.api import elastic_launch

    plan = json.loads(launch_file.read_text())
    _check_gpus(plan["processes_per_node"])
    config = _launch_config(
        plan["nodes"], plan["processes_per_node"], plan["endpoint"], plan["rendezvous"]
    )
    threads = max(1, plan["threads"] // plan["processes_per_node"])
    returned = elastic_launch(config, _worker)(threads, *plan["worker"])
    for rank, measured in returned.items():  # this node's workers, by global rank
        path = launch_file.parent / RANKS / f"rank-{rank}.json"
        path.write_text(json.dumps(measured, default=str))
