"""What a result records about where and how it was computed: peak memory (labelled by kind),
hardware, package versions, git commit, container image, and cost. No environment variables
are copied wholesale, so secrets (HF_TOKEN, WANDB_API_KEY, ...) cannot leak into results."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from importlib import metadata
from pathlib import Path

from tunebench.envs import locks
from tunebench.precision import cpu_isa

PACKAGES = (
    "tunebench",
    "torch",
    "transformers",
    "trl",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "tokenizers",
    "snakemake",
    "wandb",
    "unsloth",
    "unsloth_zoo",
)
GIB = 1024**3


def reset_peak_memory() -> None:
    import torch  # here, not above: outcomes imports this module in every step's process

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """CUDA: max reserved/allocated since the last reset. CPU: the process's peak RSS since it
    started (imports included), which is the honest number a CPU user must provision."""
    import torch

    if torch.cuda.is_available():
        return {
            "memory_kind": "cuda_max_reserved",
            "peak_memory_gb": torch.cuda.max_memory_reserved() / GIB,
            "peak_memory_allocated_gb": torch.cuda.max_memory_allocated() / GIB,
            "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        }
    # ru_maxrss is in KiB on Linux.
    return {
        "memory_kind": "cpu_peak_rss",
        "peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming this machine, for benchmark figures."""
    return f"{platform.node()}, {cpu_name()} ({cpu_isa()}), {os.cpu_count()} cores"


def measured_on() -> str:
    """When and where a benchmark figure was measured: today's date, then this machine."""
    import datetime

    return f"{datetime.date.today().isoformat()} on {machine()}"


def hardware() -> dict:
    import torch

    if torch.cuda.is_available():
        return {
            "accelerator": torch.cuda.get_device_name(0),
            "accelerator_count": 1,
            "device": "cuda",
            "host": platform.node(),
        }
    return {
        "accelerator": "cpu",
        "cpu": cpu_name(),
        "cpu_isa": cpu_isa(),
        "cpu_kernels": cpu_kernels(),
        "accelerator_count": 0,
        "cpu_threads": torch.get_num_threads(),
        "device": "cpu",
        "host": platform.node(),
    }


# The variables that hold each library's kernels below what the CPU offers
# (benchmarks/kernel_paths.py sets them): a result trained so differs from one trained without.
KERNEL_LIMITS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_kernels() -> str:
    """The vector instructions torch's own kernels use (ATEN_CPU_CAPABILITY can narrow them),
    and any limit on oneDNN's and MKL's: what the CPU offers is not always what ran."""
    import torch

    limits = [f"{name}={os.environ[name]}" for name in KERNEL_LIMITS if os.environ.get(name)]
    return " ".join([torch.backends.cpu.get_cpu_capability(), *limits])


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict:
    """Installed versions of `names` (those not installed are left out), Python's and CUDA's."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    import torch

    if torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
    return versions


def git_commit() -> dict:
    """The commit of the tunebench checkout that ran, and whether it had local changes."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            != ""
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        # An image has no .git: its build recorded the commit (containers/build.sh).
        return {"commit": os.environ.get("TUNEBENCH_GIT_COMMIT", "unknown"), "dirty": None}


def container_image() -> str:
    """The image the job ran in, as the workflow named it (name@digest); "host" outside one."""
    named = os.environ.get("TUNEBENCH_CONTAINER_IMAGE")
    if named:  # the workflow sets it for every job: the image reference, or "host"
        return named
    # Run by hand: Apptainer and podman/docker mark their containers.
    inside = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if inside:
        return inside
    if Path("/run/.containerenv").exists() or Path("/.dockerenv").exists():
        return "unnamed container"
    return "host"


def provenance() -> dict:
    return {
        "packages": package_versions(),
        "git": git_commit(),
        "hardware": hardware(),
        "container_image": container_image(),
        "environment": locks.current(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def accelerator_hours(seconds: float, hw: dict) -> float:
    """Billable device-hours: GPUs x hours on a GPU; hours of the (whole) machine on a CPU."""
    return seconds / 3600 * max(1, hw.get("accelerator_count", 0))


def price_per_hour(prices: dict[str, float], accelerator: str) -> float | None:
    """The price whose key is the longest case-insensitive substring of the accelerator name."""
    matches = [k for k in prices if k.lower() in accelerator.lower()]
    return prices[max(matches, key=len)] if matches else None
