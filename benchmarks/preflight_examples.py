"""`tunebench preflight` on example experiments, on this machine: what a user sees, as figures.

    python benchmarks/preflight_examples.py [EXPERIMENT.yaml ...]
        (default: experiments/smoke.yaml experiments/smollm2-contacts.yaml)

Each experiment is preflighted in a scratch project (its relative data paths copied beside it)
exactly as the docs say to run it, and benchmarks/figures/preflight-<stem>.md gets the machine,
the date, the command, its exit status and wall time, and the preflight's own report.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "benchmarks" / "figures"
EXAMPLES = ("experiments/smoke.yaml", "experiments/smollm2-contacts.yaml")


def preflight(experiment: Path, workdir: Path) -> tuple[int, float, str]:
    """The preflight's exit status, wall seconds and report (preflight.md)."""
    shutil.copy(experiment, workdir / experiment.name)
    shutil.copytree(ROOT / "experiments" / "data", workdir / "experiments" / "data")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tunebench", "preflight", experiment.name],
        cwd=workdir,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    name = yaml.safe_load(experiment.read_text())["name"]
    report = workdir / "results" / name / "preflight" / "preflight.md"
    if not report.is_file():
        raise SystemExit(f"{experiment}: no report\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.returncode, seconds, report.read_text()


def main() -> None:
    from tunebench.measure import measured_on

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", type=Path, default=[Path(e) for e in EXAMPLES])
    args = parser.parse_args()
    for experiment in args.experiments:
        with tempfile.TemporaryDirectory() as scratch:
            code, seconds, report = preflight(experiment.resolve(), Path(scratch))
        shown = experiment.resolve().relative_to(ROOT)
        text = (
            f"# `tunebench preflight {shown}`\n\n"
            f"- Measured: {measured_on()}; 1-minute load at the end "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
            f"- Command: `tunebench preflight {shown}` in a fresh project (by "
            f"`python benchmarks/preflight_examples.py {shown}`): exit status {code}, "
            f"{seconds:.0f} s wall time from nothing (data, model import or pre-training, "
            "every shape)\n\n" + report.replace("# Preflight of", "## Preflight of", 1)
        )
        out = FIGURES / f"preflight-{experiment.stem}.md"
        out.write_text(text)
        print(text)


if __name__ == "__main__":
    main()
