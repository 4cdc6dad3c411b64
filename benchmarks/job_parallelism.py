"""One job at a time on every core, or one job per core: which finishes an experiment sooner on
this machine? Runs the experiment twice through `tunebench run`, each in its own scratch
project: first with resources.threads = the machine's cores (Snakemake runs one job at a time,
torch uses every core inside it), then with resources.threads = 1 (Snakemake runs as many jobs
at once as there are cores). Compares the wall times, the CPU seconds of each rule (Snakemake's
benchmark files), and whether the two gave the same numbers (torch's reductions split work by
thread, so they may not agree to the last digit).

    python benchmarks/job_parallelism.py [benchmarks/data/parallelism-smollm2.yaml]

Writes benchmarks/figures/job_parallelism-<experiment>.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import kernel_paths
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "benchmarks" / "figures"
METRICS = ("exact_match", "test_loss", "validation_loss")


def run(experiment: Path, workdir: Path, threads: int) -> tuple[pd.DataFrame, float, Path]:
    """kernel_paths.run on the experiment with resources.threads set: its table, wall seconds
    and results folder."""
    settings = yaml.safe_load(experiment.read_text())
    settings.setdefault("resources", {})["threads"] = threads
    staged = workdir / "staged" / experiment.name  # kernel_paths.run copies it into workdir
    staged.parent.mkdir(parents=True)
    staged.write_text(yaml.safe_dump(settings, sort_keys=False))
    table, seconds = kernel_paths.run(staged, workdir, {**os.environ, "HF_HUB_OFFLINE": "1"})
    return table, seconds, workdir / "results" / settings["name"]


def rule_seconds(root: Path) -> pd.Series:
    """Wall seconds of each rule's jobs, summed (Snakemake's benchmark files)."""
    rows = [
        {"rule": tsv.parent.name, "seconds": pd.read_csv(tsv, sep="\t")["s"].iloc[-1]}
        for tsv in sorted((root / "benchmarks").glob("*/*.tsv"))
    ]
    return pd.DataFrame(rows).groupby("rule")["seconds"].sum()


def main() -> None:
    from tunebench.measure import measured_on

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "experiment",
        type=Path,
        nargs="?",
        default=REPO / "benchmarks" / "data" / "parallelism-smollm2.yaml",
    )
    args = parser.parse_args()
    experiment = args.experiment.resolve()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "serial").mkdir()
        (Path(tmp) / "parallel").mkdir()
        serial, serial_s, serial_root = run(experiment, Path(tmp) / "serial", cores)
        parallel, parallel_s, parallel_root = run(experiment, Path(tmp) / "parallel", 1)
        rules = pd.DataFrame(
            {
                f"{cores} threads, 1 job at a time (s)": rule_seconds(serial_root),
                f"1 thread, {cores} jobs at a time (s)": rule_seconds(parallel_root),
            }
        ).round(1)
    metrics = [m for m in METRICS if m in serial and m in parallel]
    side = serial[["run_id", *metrics]].merge(
        parallel[["run_id", *metrics]], on="run_id", suffixes=(" serial", " parallel")
    )
    for metric in metrics:
        side[f"{metric} change"] = side[f"{metric} parallel"] - side[f"{metric} serial"]
    shown = kernel_paths.shown(experiment)
    text = [
        f"# One job at a time or one job per core: {shown}",
        "",
        f"- Measured: {measured_on()}",
        f"- Command: `python benchmarks/job_parallelism.py {shown}`",
        f"- Wall time of `tunebench run`, from nothing: {serial_s:.0f} s with {cores} threads "
        f"and one job at a time, {parallel_s:.0f} s with 1 thread and {cores} jobs at a time "
        f"(x{serial_s / parallel_s:.2f}).",
        "- Rule seconds: each rule's jobs' wall seconds, summed (jobs at once overlap, so the "
        "second column adds up to more than its wall time).",
        "",
        rules.reset_index().to_markdown(index=False),
        "",
        "## The same numbers? (parallel minus serial, each run)",
        "",
        side.round(4).to_markdown(index=False),
    ]
    out = FIGURES / f"job_parallelism-{experiment.stem}.md"
    out.write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
