"""Style and workflow conventions, enforced in CI: ruff, snakefmt, snakemake --lint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

BIN = Path(sys.executable).parent
# Rules get `container:` images with the pinned environments (issue 7); until then this is the
# one lint we expect, and any other finding fails the test.
PENDING_LINTS = {"Specify a conda environment or container for each rule."}


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff():
    out = run(str(BIN / "ruff"), "check", "src", "tests", "benchmarks")
    assert out.returncode == 0, out.stdout + out.stderr
    out = run(str(BIN / "ruff"), "format", "--check", "src", "tests", "benchmarks")
    assert out.returncode == 0, out.stdout + out.stderr


def test_snakefmt():
    out = run(str(BIN / "snakefmt"), "--check", "Snakefile", "workflow")
    assert out.returncode == 0, out.stdout + out.stderr


def test_snakemake_lint():
    out = run(sys.executable, "-m", "snakemake", "--lint", "--configfile", "experiments/smoke.yaml")
    findings = set(re.findall(r"^\s+\* (.+?):?$", out.stdout + out.stderr, re.M))
    assert findings <= PENDING_LINTS, out.stdout + out.stderr
