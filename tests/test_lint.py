"""Style and workflow conventions, enforced in CI: ruff, snakefmt, snakemake --lint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff():
    out = run(str(BIN / "ruff"), "check", "src", "tests", "benchmarks", "experiments")
    assert out.returncode == 0, out.stdout + out.stderr
    out = run(str(BIN / "ruff"), "format", "--check", "src", "tests", "benchmarks", "experiments")
    assert out.returncode == 0, out.stdout + out.stderr


def test_snakefmt():
    out = run(str(BIN / "snakefmt"), "--check", "workflow")
    assert out.returncode == 0, out.stdout + out.stderr


def test_snakemake_lint():
    out = run(sys.executable, "-m", "snakemake", "--lint", "--configfile", "experiments/smoke.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr
    assert not re.findall(r"^\s+\* (.+?):?$", out.stdout + out.stderr, re.M)
