"""Pinned Python environments: the hash-locked stacks in containers/locks/, the record an
installed environment keeps of the lock it came from, and the on-demand Unsloth environment.

Each environment (the project's .venv, a container's /opt/venv, the Unsloth env) is installed
from one lock and then records it in `<prefix>/tunebench-env.json`. Every result carries that
record (lock name and hash) plus the packages that differ from the lock, so a drifted
environment is visible in the results instead of silently trusted.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tunebench.envs.wheel_source import install_options
from tunebench.io import atomic_path, sha256_file

RECORD = "tunebench-env.json"
STACKS = ("hf", "unsloth")
# `name==version \` (hash lines and comments follow); extras and markers are not used by uv here.
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def normalise(name: str) -> str:
    """PEP 503 project name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(lock_text: str) -> dict[str, str]:
    return {normalise(name): version for name, version in PIN.findall(lock_text)}


def lock_file(project: Path, stack: str, variant: str) -> Path:
    """containers/locks/<stack>-<variant>.txt; variant cpu (torch CPU build) or cuda."""
    return Path(project) / "containers" / "locks" / f"{stack}-{variant}.txt"


def default_variant() -> str:
    """cuda when an NVIDIA driver is present, else cpu (without importing torch)."""
    return "cuda" if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia").exists() else "cpu"


def current_variant() -> str:
    """cpu or cuda: the torch build of the lock this environment came from, else the machine's."""
    entry = recorded()
    return Path(entry["lock"]).stem.rsplit("-", 1)[1] if entry else default_variant()


def record_lock(stack: str, lock: Path, prefix: Path | None = None) -> dict:
    """Write the lock record of the environment at `prefix` (default: this interpreter's)."""
    if stack not in STACKS:
        raise ValueError(f"unknown stack {stack!r}; use one of {STACKS}")
    entry = {
        "stack": stack,
        "lock": Path(lock).name,
        "lock_sha256": sha256_file(lock),
        "python": ".".join(map(str, sys.version_info[:3])),
        "pins": lock_pins(Path(lock).read_text()),
    }
    target = Path(prefix or sys.prefix) / RECORD
    target.write_text(json.dumps(entry, indent=1, sort_keys=True) + "\n")
    return entry


def installed_versions() -> dict[str, str]:
    return {
        normalise(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions()
        if d.metadata["Name"]
    }


def drift(pins: dict[str, str], installed: dict[str, str]) -> list[str]:
    """Locked packages that are missing or at another version in this environment."""
    return [
        f"{name}: locked {version}, installed {installed.get(name, 'none')}"
        for name, version in sorted(pins.items())
        if installed.get(name) != version
    ]


def recorded() -> dict | None:
    """The record of this interpreter's environment (see record_lock()), if it has one."""
    path = Path(sys.prefix) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def current() -> dict:
    """Which lock this interpreter's environment was installed from, and how far it drifted."""
    entry = recorded()
    if entry is None:
        return {
            "stack": None,
            "lock": None,
            "lock_sha256": None,
            "drift": ["not installed from a lock"],
        }
    return {
        "stack": entry["stack"],
        "lock": entry["lock"],
        "lock_sha256": entry["lock_sha256"],
        "drift": current_drift(entry),
    }


DRIFT_CACHE = "tunebench-env-drift.json"


def _site_fingerprint() -> list[list]:
    """The modification times of the folders packages are installed in: installing, upgrading
    or removing a package renames entries there, which changes them."""
    return [
        [folder, os.stat(folder).st_mtime_ns]
        for folder in sys.path
        if folder.endswith("-packages") and os.path.isdir(folder)
    ]


def current_drift(entry: dict) -> list[str]:
    """drift() of this environment, reused while its package folders are unchanged: reading
    every installed package's metadata costs each job about 0.3 s, and jobs are many."""
    key = {"lock_sha256": entry["lock_sha256"], "sites": _site_fingerprint()}
    cache = Path(sys.prefix) / DRIFT_CACHE
    try:
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            return cached["drift"]
    except (OSError, ValueError, KeyError):
        pass
    found = drift(entry["pins"], installed_versions())
    try:
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps({"key": key, "drift": found}))
    except OSError:  # a read-only environment (an image's, as another user): compute each time
        pass
    return found


# ---------------------------------------------------------------- the on-demand Unsloth env


def envs_root() -> Path:
    return Path(os.environ.get("TUNEBENCH_ENVS") or Path.home() / ".cache" / "tunebench" / "envs")


def env_dir(lock: Path) -> Path:
    """One folder per lock content: a changed lock gets a new environment, never a patched one."""
    return envs_root() / f"{Path(lock).stem}-{sha256_file(lock)[:12]}"


def env_python(lock: Path) -> Path:
    return env_dir(lock) / "bin" / "python"


def ensure(stack: str, lock: Path, python: str | None = None) -> Path:
    """Create the environment for `lock` unless it exists; return its folder.

    Built in a temporary folder and renamed when complete, under a file lock, so concurrent jobs
    wait for one build and a killed build never leaves a half-installed env that looks ready.
    """
    folder = env_dir(lock)
    if (folder / RECORD).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".lock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if (folder / RECORD).is_file():
            return folder
        building = folder.with_suffix(".building")
        shutil.rmtree(building, ignore_errors=True)
        base = python or getattr(sys, "_base_executable", sys.executable)
        print(f"creating the {stack} environment from {lock} in {folder}", flush=True)
        subprocess.run([base, "-m", "venv", str(building)], check=True)
        subprocess.run(
            [
                *installer(building / "bin" / "python", lock),
                "--require-hashes",
                "--no-deps",
                "-r",
                str(lock),
            ],
            check=True,
            stdout=sys.stdout,
            stderr=sys.stderr,
        )
        # Written by the new interpreter, so the record holds its own Python version.
        subprocess.run(
            [str(building / "bin" / "python"), "-c", _RECORD_SNIPPET, stack, str(lock)],
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        shutil.rmtree(folder, ignore_errors=True)
        building.rename(folder)
    return folder


def installer(python: Path, lock: Path) -> list[str]:
    """uv when it is at hand (in the dev tools; about 15 s instead of pip's 3 minutes for the
    Unsloth stack), else pip; both check every file against the lock's hashes, and both are
    told where the lock's torch build is (wheel_source)."""
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        return [str(python), "-m", "pip", "install", "--no-input", *install_options(lock, "pip")]
    return [uv, "pip", "install", "--python", str(python), *install_options(lock, "uv")]


_RECORD_SNIPPET = (
    "import sys; from tunebench.envs.locks import record_lock; "
    "record_lock(sys.argv[1], sys.argv[2])"
)


# ---------------------------------------------------------------- container images


def image_reference(project: Path, stack: str, variant: str = "cuda") -> str:
    """What Snakemake's `container:` runs for a stack: $TUNEBENCH_IMAGE_<STACK> (e.g. a .sif on
    a cluster), else the image containers/build.sh recorded in containers/images.json, by
    digest once one is known (a tag can move, a digest cannot)."""
    override = os.environ.get(f"TUNEBENCH_IMAGE_{stack.upper()}")
    if override:
        return override
    entry = json.loads((Path(project) / "containers" / "images.json").read_text())[stack][variant]
    name = entry["image"]
    if entry.get("digest"):
        # Drop the tag (not a registry port: the tag is after the last slash).
        repository = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
        return f"docker://{repository}@{entry['digest']}"
    return f"docker://{name}"
