"""What planning costs: `snakemake --dry-run` of tunebench's workflow against a bare Snakefile of
the same shape (the same rules, jobs and files per job, nothing behind them) and a minimal one
(the same rules and jobs, outputs only), at several matrix sizes, alternating, several repeats.

    python benchmarks/planning.py [--runs 1000 10000] [--repeats 3]

Writes benchmarks/figures/planning.md and planning.csv. The ratio is the workflow's own cost of
building the DAG (validation, the matrix, input functions, params, resources) on top of what
Snakemake needs for any workflow of that size. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "benchmarks" / "figures"

# The shape of tunebench's DAG: one of each preparation step, one train and one evaluate job
# per run, one baseline, the table; per job the same input, output, log and benchmark files,
# so what Snakemake must do for a workflow of these files is the same. Nothing is computed
# behind the names (no validation, no matrix, no functions but one param), and shell commands
# only `touch` their outputs.
BARE_SNAKEFILE = """
RUNS = [f"run{i}" for i in range(config["runs"])]


rule all:
    input:
        "results/comparison.csv",


rule build_tokenizer:
    output:
        "results/tokenizer/done",
    shell:
        "touch {output}"


rule pretrain_base:
    input:
        "results/tokenizer/done",
    output:
        "results/base/done",
    shell:
        "touch {output}"


rule prepare_data:
    output:
        "results/data/manifest.json",
    shell:
        "touch {output}"


rule tokenize:
    input:
        "results/data/manifest.json",
        "results/tokenizer/done",
    output:
        "results/data/tokenized/manifest.json",
    shell:
        "touch {output}"


rule train:
    input:
        "results/base/done",
        "results/data/tokenized/manifest.json",
    output:
        "results/runs/{run_id}/train/result.json",
    log:
        "results/logs/train/{run_id}.log",
    benchmark:
        "results/benchmarks/train/{run_id}.tsv"
    params:
        run=lambda w: w.run_id,
    resources:
        mem_mb=8192,
        runtime=120,
    shell:
        "touch {output}"


rule evaluate:
    input:
        "results/runs/{run_id}/train/result.json",
    output:
        result="results/runs/{run_id}/eval/result.json",
        samples="results/runs/{run_id}/eval/samples.jsonl",
    log:
        "results/logs/evaluate/{run_id}.log",
    benchmark:
        "results/benchmarks/evaluate/{run_id}.tsv"
    params:
        run=lambda w: w.run_id,
    resources:
        mem_mb=8192,
        runtime=60,
    shell:
        "touch {output}"


rule evaluate_base:
    input:
        "results/base/done",
        "results/data/tokenized/manifest.json",
    output:
        "results/baseline/result.json",
    shell:
        "touch {output}"


rule compile:
    input:
        expand("results/runs/{run_id}/eval/result.json", run_id=RUNS),
        "results/baseline/result.json",
    output:
        "results/comparison.csv",
    shell:
        "touch {output}"
"""


# The same rules and jobs with outputs only: no logs, no benchmark files, one output per job.
MINIMAL_SNAKEFILE = re.sub(
    r"    (log|benchmark):\n        .*\n|        samples=.*\n", "", BARE_SNAKEFILE
).replace(
    'result="results/runs/{run_id}/eval/result.json"', '"results/runs/{run_id}/eval/result.json"'
)


def experiment(runs: int) -> dict:
    """`runs` runs of one built-in model: 5 ranks x 10 learning rates x runs/50 seeds."""
    assert runs % 50 == 0, "a multiple of 50 runs"
    return {
        "name": f"planning-{runs}",
        "models": [{"name": "tiny", "builtin": {"pretrain_steps": 10}}],
        "methods": [
            {
                "method": "lora",
                "ranks": [2, 4, 8, 16, 32],
                "learning_rate": [1e-4 * (i + 1) for i in range(10)],
            }
        ],
        "datasets": [{"name": "wordops", "builtin": "wordops"}],
        "training": {"max_steps": 10, "seeds": list(range(runs // 50))},
    }


def dry_run(workdir: Path, args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `snakemake --dry-run`."""
    command = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "snakemake", "-n", "-q"]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, *args], cwd=workdir, capture_output=True, text=True, timeout=3600
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"dry run failed in {workdir}:\n{done.stderr[-3000:]}")
    rss_kb = int(re.findall(r"^(\d+)$", done.stderr, re.M)[-1])
    return seconds, rss_kb / 1024


def jobs_planned(workdir: Path, args: list[str]) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    return int(re.search(r"^total\s+(\d+)$", out.stdout + out.stderr, re.M).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=FIGURES / "planning")
    args = parser.parse_args()
    rows = []
    for runs in args.runs:
        with tempfile.TemporaryDirectory() as tmp:
            ours, bare, minimal = (Path(tmp) / n for n in ("tunebench", "bare", "minimal"))
            for folder in (ours, bare, minimal):
                folder.mkdir()
            (ours / "exp.yaml").write_text(yaml.safe_dump(experiment(runs)))
            (bare / "Snakefile").write_text(BARE_SNAKEFILE)
            (minimal / "Snakefile").write_text(MINIMAL_SNAKEFILE)
            cases = {
                "tunebench": (
                    ours,
                    [
                        "--snakefile",
                        str(REPO / "workflow" / "Snakefile"),
                        "--configfile",
                        "exp.yaml",
                    ],
                ),
                "bare": (bare, ["--config", f"runs={runs}", "--cores", "1"]),
                "minimal": (minimal, ["--config", f"runs={runs}", "--cores", "1"]),
            }
            counts = {name: jobs_planned(d, a) for name, (d, a) in cases.items()}
            assert len(set(counts.values())) == 1, f"not the same shape: {counts}"
            for repeat in range(args.repeats):
                for name, (workdir, extra) in cases.items():  # alternating
                    seconds, rss = dry_run(workdir, extra)
                    rows.append(
                        {
                            "runs": runs,
                            "jobs": counts[name],
                            "workflow": name,
                            "repeat": repeat,
                            "seconds": seconds,
                            "peak_rss_mb": rss,
                        }
                    )
                    print(f"{runs:>6} runs  {name:<9} {seconds:7.2f} s  {rss:7.0f} MB", flush=True)
    frame = pd.DataFrame(rows)
    summary = frame.groupby(["runs", "workflow"]).agg(
        seconds_median=("seconds", "median"),
        seconds_min=("seconds", "min"),
        seconds_max=("seconds", "max"),
        peak_rss_mb=("peak_rss_mb", "max"),
    )
    medians = summary["seconds_median"].unstack()
    ratio = pd.DataFrame(
        {
            "tunebench / bare": medians["tunebench"] / medians["bare"],
            "tunebench / minimal": medians["tunebench"] / medians["minimal"],
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out.with_suffix(".csv"), index=False)
    from tunebench.measure import measured_on

    args.out.with_suffix(".md").write_text(
        f"# Planning cost: `snakemake --dry-run`, tunebench vs a bare Snakefile\n\n"
        f"measured {measured_on()}, {len(rows) // len(args.runs) // 3} repeats "
        f"each, alternating\n\n"
        + summary.round(2).to_markdown()
        + "\n\nRatios of the medians. bare: the same rules, jobs and files (inputs, outputs, logs,"
        " benchmark files) with nothing behind them; minimal: the same rules and jobs with"
        " outputs only.\n\n" + ratio.round(2).to_markdown() + "\n"
    )
    print(ratio.round(2).to_string())
    print(f"-> {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
