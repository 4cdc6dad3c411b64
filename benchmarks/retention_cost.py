"""What retention scoring (evaluation.retention, on by default) costs: the default experiment
run once in a scratch folder, then each evaluation job's time split into its retention part
(`retention_seconds`, timed inside the job) and the rest. Also the experiment's forgetting
table: each configuration's gain on the task beside its retention deltas.

    python benchmarks/retention_cost.py [experiments/smoke.yaml] [--results results/smoke]

--results reads a finished results folder instead of running the experiment. Writes
benchmarks/figures/retention_cost.md (machine and date at the top).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from tunebench import layout
from tunebench.io import read_json
from tunebench.measure import measured_on

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "figures" / "retention_cost.md"
LIMIT = 0.10  # the budget: at most a tenth of evaluation time


def run(experiment: Path, workdir: Path) -> Path:
    shutil.copy(experiment, workdir / experiment.name)
    done = subprocess.run(
        [sys.executable, "-m", "tunebench", "run", experiment.name],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    root = workdir / "results" / yaml.safe_load(experiment.read_text())["name"]
    if not (root / "comparison.csv").is_file():
        raise SystemExit(f"{workdir}: no table\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return root


def jobs(root: Path) -> pd.DataFrame:
    """One row per evaluation job: its Snakemake wall time, the scoring inside it, retention."""
    rows = []
    for rule, pattern in (("evaluate", "runs/*/eval"), ("evaluate_base", "baselines/*/*/eval")):
        for folder in sorted(root.glob(pattern)):
            result = folder / "result.json"
            if not result.is_file():
                continue
            got = read_json(result)
            name = got["run_id"] if rule == "evaluate" else ".".join(folder.parts[-3:-1])
            tsv = root / layout.BENCHMARK.format(rule=rule, name=name)
            job = pd.read_csv(tsv, sep="\t")["s"].iloc[0] if tsv.is_file() else float("nan")
            rows.append(
                {
                    "job": got["run_id"],
                    "job_seconds": job,
                    "scoring_seconds": got.get("eval_seconds", 0.0)
                    + got.get("retention_seconds", 0.0),
                    "retention_seconds": got.get("retention_seconds", float("nan")),
                }
            )
    if not rows:
        raise SystemExit(f"{root}: no evaluation results")
    return pd.DataFrame(rows)


def forgetting(root: Path) -> pd.DataFrame:
    table = pd.read_csv(root / "comparison.csv")
    deltas = [c for c in table if c.startswith("delta_retention_")]
    gains = [
        c for c in ("delta_exact_match_vs_base", "delta_preference_accuracy_vs_base") if c in table
    ]
    keep = ["run_id", *gains, *deltas]
    return table[table["method"] != "base"][keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "experiment", nargs="?", type=Path, default=REPO / "experiments" / "smoke.yaml"
    )
    parser.add_argument("--results", type=Path, help="a finished results folder: do not run")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.results or run(args.experiment.resolve(), Path(scratch))
        cost, forgot = jobs(root), forgetting(root)
    total = cost[["job_seconds", "scoring_seconds", "retention_seconds"]].sum()
    share_job = total["retention_seconds"] / total["job_seconds"]
    share_scoring = total["retention_seconds"] / total["scoring_seconds"]
    summary = pd.DataFrame(
        [
            {
                "evaluation jobs": len(cost),
                "job seconds": round(total["job_seconds"], 1),
                "scoring seconds": round(total["scoring_seconds"], 1),
                "retention seconds": round(total["retention_seconds"], 2),
                "retention / job time": f"{share_job:.1%}",
                "retention / scoring time": f"{share_scoring:.1%}",
            }
        ]
    )
    shown = args.experiment.resolve().relative_to(REPO)
    verdict = "within" if share_job <= LIMIT else "OVER"
    text = (
        f"# Retention scoring's cost: {args.experiment.name}\n\n"
        f"- Measured: {measured_on()}\n"
        f"- Command: `python benchmarks/retention_cost.py {shown}`\n"
        "- Job seconds: Snakemake's wall time of each evaluation job (process start, model "
        "load, scoring); scoring seconds: the task's scoring and retention inside it; retention "
        "seconds: the retention sets alone (`retention_seconds` of each result).\n"
        f"- Verdict: retention is {share_job:.1%} of evaluation job time, {verdict} the "
        f"{LIMIT:.0%} budget.\n\n"
        + summary.to_markdown(index=False)
        + "\n\n## Each evaluation job\n\n"
        + cost.round(2).to_markdown(index=False)
        + "\n\n## Forgetting (delta vs the untuned model; one seed)\n\n"
        + forgot.round(3).to_markdown(index=False)
        + "\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
