"""`make env` finds torch's CPU build by itself: a local wheel folder that holds it, else
PyTorch's CPU index (PyPI does not serve it); a lock whose torch PyPI serves needs neither."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

from tunebench.envs.wheel_source import PYTORCH_CPU_INDEX, install_options, torch_pin

SCRIPT = REPO / "src" / "tunebench" / "envs" / "wheel_source.py"
CPU_LOCK = REPO / "containers" / "locks" / "hf-cpu.txt"


def source_for(lock, folders: str) -> str:
    """What the Makefile gets, run as it runs it: by path, with no environment yet."""
    env = {**os.environ, "TUNEBENCH_WHEEL_FOLDERS": folders}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(lock)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_local_folder_holding_the_wheel_is_used(tmp_path):
    pin = torch_pin(CPU_LOCK)
    assert pin.endswith("+cpu")
    (tmp_path / f"torch-{pin}-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert source_for(CPU_LOCK, f"{tmp_path / 'empty'} {tmp_path}") == f"--find-links {tmp_path}"


def test_without_a_local_wheel_the_pytorch_cpu_index(tmp_path):
    (tmp_path / "torch-2.0.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert source_for(CPU_LOCK, str(tmp_path)) == f"--extra-index-url {PYTORCH_CPU_INDEX}"
    uv = install_options(CPU_LOCK, "uv", folders=[])
    assert uv[:2] == ["--extra-index-url", PYTORCH_CPU_INDEX] and "unsafe-best-match" in uv


def test_a_build_that_pypi_serves_needs_no_source(tmp_path):
    assert source_for(REPO / "containers" / "locks" / "hf-cuda.txt", str(tmp_path)) == ""


def test_the_makefile_installs_with_it(tmp_path):
    plan = subprocess.run(
        ["make", "-n", "env", f"VENV={tmp_path / 'venv'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout
    assert "--require-hashes" in plan and "src/tunebench/envs/wheel_source.py" in plan
