"""Where pip finds the torch build a lock pins, so `make env` works on any machine.

The CPU locks pin torch's CPU build (`torch==2.13.0+cpu`), which PyPI does not serve: it comes
from a local wheel folder where one holds it (this project's machines keep it in /opt/wheels),
else from PyTorch's own CPU index. Every file is still checked against the lock's hashes.

Standard library only: the Makefile runs this file before any environment exists
(`python3 src/tunebench/envs/wheel_source.py LOCK [--installer pip|uv]`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
KNOWN_WHEEL_FOLDERS = ("/opt/wheels",)
TORCH_PIN = re.compile(r"^torch==(\S+?)\s", re.M)


def torch_pin(lock: Path) -> str | None:
    found = TORCH_PIN.search(Path(lock).read_text())
    return found.group(1) if found else None


def wheel_folders() -> list[Path]:
    """Folders that may hold wheels: $TUNEBENCH_WHEEL_FOLDERS alone when set (space
    separated), else pip's find-links ($PIP_FIND_LINKS, pip's configuration) and the known
    local folders."""
    chosen = os.environ.get("TUNEBENCH_WHEEL_FOLDERS")
    if chosen is not None:
        return [Path(p) for p in chosen.split()]
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        configured = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        links += configured.stdout.split() if configured.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        pass
    return [Path(p) for p in [*links, *KNOWN_WHEEL_FOLDERS] if "://" not in p]


def install_options(lock: Path, installer: str = "pip", folders: list[Path] | None = None):
    """The options that let `installer` find the lock's torch: none when PyPI has it."""
    pin = torch_pin(lock)
    if pin is None or "+" not in pin:  # no local version tag: PyPI serves this build
        return []
    for folder in wheel_folders() if folders is None else folders:
        if folder.is_dir() and any(folder.glob(f"torch-{pin}-*.whl")):
            return ["--find-links", str(folder)]
    options = ["--extra-index-url", PYTORCH_CPU_INDEX]
    if installer == "uv":  # uv takes a package from the first index that has it, by default
        options += ["--index-strategy", "unsafe-best-match"]
    return options


if __name__ == "__main__":
    installer = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--installer" else "pip"
    print(" ".join(install_options(Path(sys.argv[1]), installer)))
