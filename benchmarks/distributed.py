"""One run trained in one process, in two DDP processes and in two FSDP processes on this
machine's CPU (gloo): time per step, each rank's peak memory and how far each loss curve is
from the single process's, for full fine-tuning and LoRA of a real model.

    python benchmarks/distributed.py [--steps 8]

SmolLM2-135M-Instruct (the pinned GGUF of experiments/smollm2-contacts.yaml) on the contacts
task, through the workflow up to training (`tunebench run EXPERIMENT -- --until train`), once
per layout in a folder of its own: resources.distributed is not part of a run's id, so the
three layouts would otherwise share one result. Every layout gets the machine's cores: one
process with all of them as threads, or two processes with half each.

On a CPU, FSDP's gain is memory, not time: each rank holds half of the parameters and
optimizer states (model_state_gb_per_rank, measured from the tensors each process holds after
training) and gathers a layer's weights when it needs them (time spent in gloo's all-gather).
The peak RSS per process (imports, activations, logits and allocator slack included) need not
show that saving.

Writes benchmarks/figures/distributed.md and .csv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "benchmarks" / "figures"
REAL = REPO / "experiments" / "smollm2-contacts.yaml"
METHODS = {
    "full": {"method": "full", "learning_rate": 5e-5},
    "lora": {"method": "lora", "ranks": [8], "target_modules": "all-linear", "learning_rate": 1e-3},
}
# (label, resources.distributed): the layouts compared; `processes: 1` is the reference.
LAYOUTS = [
    ("1 process", {"processes": 1}),
    ("2 processes, DDP", {"processes": 2, "strategy": "ddp"}),
    ("2 processes, FSDP", {"processes": 2, "strategy": "fsdp"}),
]


def experiment(method: str, distributed: dict, steps: int, threads: int) -> dict:
    return {
        "name": "distributed",
        "models": yaml.safe_load(REAL.read_text())["models"],
        "methods": [METHODS[method]],
        "datasets": [
            {
                "name": "contacts",
                "path": "data/contacts.jsonl",
                "test_size": 8,
                "validation_size": 4,
            }
        ],
        "training": {
            "max_steps": steps,
            "batch_size": 4,
            "max_length": 128,
            "logging_steps": 1,
            "precision": "float32",
        },
        "resources": {"threads": threads, "distributed": distributed},
    }


def train(workdir: Path, exp: dict) -> dict:
    (workdir / "data").mkdir(parents=True)
    shutil.copy(REPO / "experiments" / "data" / "contacts.jsonl", workdir / "data")
    (workdir / "exp.yaml").write_text(yaml.safe_dump(exp))
    done = subprocess.run(
        [sys.executable, "-m", "tunebench", "run", "exp.yaml", "--", "--until", "train"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    results = list(workdir.glob("results/distributed/runs/*/train/result.json"))
    if not results:
        raise SystemExit(f"{workdir}: no result\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    result = json.loads(results[0].read_text())
    if result["status"] != "ok":
        raise SystemExit(f"{workdir}: {result['status']}: {result['reason']}")
    return result


def losses(result: dict) -> list[float]:
    return [h["loss"] for h in result["log_history"] if "loss" in h]


def main() -> None:
    from tunebench.measure import measured_on

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="tunebench-distributed-") as tmp:
        for method in METHODS:
            reference = None
            for label, distributed in LAYOUTS:
                started = time.perf_counter()
                workdir = Path(tmp) / f"{method}-{distributed['processes']}-{len(rows)}"
                result = train(workdir, experiment(method, distributed, args.steps, threads))
                print(f"{method}, {label}: {time.perf_counter() - started:.0f} s", flush=True)
                curve = losses(result)
                reference = reference or curve
                per_rank = result.get("peak_memory_gb_per_rank", [result["peak_memory_gb"]])
                state = result.get("model_state_gb_per_rank", [result["model_state_gb"]])
                rows.append(
                    {
                        "method": method,
                        "layout": label,
                        "strategy": result.get("strategy", "-"),
                        "steps": result["steps"],
                        "seconds_per_step": result["train_seconds"] / result["steps"],
                        "tokens_per_second": result["tokens_per_second"],
                        "model_state_gb_per_rank": " / ".join(f"{gb:.3f}" for gb in state),
                        "peak_rss_gb_per_rank": " / ".join(f"{gb:.2f}" for gb in per_rank),
                        "largest_loss_difference": max(
                            abs(a - b) for a, b in zip(curve, reference, strict=True)
                        ),
                        "final_loss": curve[-1],
                    }
                )
    table = pd.DataFrame(rows)
    FIGURES.mkdir(parents=True, exist_ok=True)
    table.to_csv(FIGURES / "distributed.csv", index=False)
    header = (
        f"# One run in one and two processes, measured {measured_on()}\n\n"
        f"SmolLM2-135M-Instruct, contacts task, batch 4 (the global batch), max_length 128, "
        f"float32, {args.steps} steps; `python benchmarks/distributed.py --steps {args.steps}`. "
        "Loss differences are against the one-process run of the same method, step by step. "
        "Model state: parameters, gradients and optimizer states each process holds after "
        "training (its shards under FSDP). Peak RSS: each process's peak resident memory, "
        "imports, activations and allocator slack included.\n\n"
    )
    (FIGURES / "distributed.md").write_text(header + table.to_markdown(index=False) + "\n")
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
