"""What retention scoring (evaluation.retention, on by default) costs: the default experiment
run once in a scratch folder, then each evaluation job's time split into its retention part
(`retention_seconds`, timed inside the job) and the rest. Also the experiment's forgetting
table: each configuration's gain on the task beside its retention deltas.

    python benchmarks/retention_cost.py [experiments/smoke.yaml] [--results results/smoke]
        [--seeds 0 1] [--workdir DIR] [--kernels narrower]
        [--out benchmarks/figures/retention_cost.md]

--results reads a finished results folder instead of running the experiment. --kernels
narrower runs it with PyTorch, oneDNN and MKL held to the next narrower instruction set
(kernel_paths.py): a finding stated for both CPU kernel paths needs both runs. Writes
benchmarks/figures/retention_cost.md (machine, kernels and date at the top), with each
configuration's forgetting per unit of gain on the task (Biderman et al. 2024's comparison).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from tunebench import layout
from tunebench.experiment import validate_data
from tunebench.io import read_json
from tunebench.matrix import baselines, dataset_key, model_key
from tunebench.measure import measured_on

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "figures" / "retention_cost.md"
LIMIT = 0.10  # the budget: at most a tenth of evaluation time


def run(
    experiment: Path,
    workdir: Path,
    seeds: list[int] | None = None,
    base_only: bool = False,
    env: dict | None = None,
) -> Path:
    settings = yaml.safe_load(experiment.read_text())
    if seeds:  # more seeds give the forgetting an interval
        settings["training"]["seeds"] = seeds
    (workdir / experiment.name).write_text(yaml.safe_dump(settings, sort_keys=False))
    data = workdir / "experiments" / "data"
    if not data.exists():  # the experiment's relative data paths, inside the scratch project
        shutil.copytree(REPO / "experiments" / "data", data)
    root = workdir / "results" / settings["name"]
    targets = []
    if base_only:  # the untuned models' evaluations alone: Snakemake's targets
        exp = validate_data(settings)
        targets = [
            "--",
            *(
                str(
                    Path("results")
                    / settings["name"]
                    / layout.BASELINE_RESULT.format(
                        model=model_key(model), dataset=dataset_key(dataset)
                    )
                )
                for model, dataset in baselines(exp)
            ),
        ]
    done = subprocess.run(
        [sys.executable, "-m", "tunebench", "run", experiment.name, *targets],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    wanted = "baselines" if base_only else "comparison.csv"
    if not (root / wanted).exists():
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


def trained_on(root: Path) -> str:
    """Where the runs trained, from their results' provenance (a GPU where there was one)."""
    devices = sorted(
        {
            read_json(path).get("provenance", {}).get("hardware", {}).get("accelerator") or "cpu"
            for path in root.glob(layout.TRAIN_RESULT.format(run_id="*"))
        }
    )
    return f"runs trained on: {', '.join(devices) or 'none'}"


def forgetting(root: Path) -> pd.DataFrame:
    """Each run's gains on the task beside its retention deltas."""
    table = pd.read_csv(root / "comparison.csv")
    deltas = [c for c in table if c.startswith("delta_") and c.endswith("_vs_base")]
    ordered = [c for c in deltas if "retention" not in c] + [c for c in deltas if "retention" in c]
    return table[table["method"] != "base"][["run_id", *ordered]]


def by_configuration(root: Path) -> pd.DataFrame:
    """Each configuration's mean delta over seeds, with its interval where there are seeds."""
    configs = pd.read_csv(root / "comparison_by_config.csv")
    configs = configs[configs["method"] != "base"]
    deltas = [c for c in configs if c.startswith("delta_") and c.endswith("_vs_base")]
    out = configs[["configuration", "finished"]].rename(columns={"finished": "seeds"})
    for column in deltas:
        low, high = configs.get(f"{column}_low"), configs.get(f"{column}_high")
        out[column.removeprefix("delta_").removesuffix("_vs_base")] = [
            f"{m:+.3f}" + ("" if pd.isna(lo) else f" [{lo:+.3f}, {hi:+.3f}]")
            for m, lo, hi in zip(configs[column], low, high, strict=True)
        ]
    return out


def per_unit_of_gain(root: Path, experiment: Path) -> pd.DataFrame:
    """Each configuration's gain on the task's ranking metric and its forgetting on every
    retention measure (a loss's rise, an accuracy's fall), and forgetting / gain."""
    from tunebench import retention
    from tunebench.reporting.recommend import ranking_metric

    exp = validate_data(yaml.safe_load(experiment.read_text()))
    metric, higher = ranking_metric(exp)
    configs = pd.read_csv(root / "comparison_by_config.csv")
    configs = configs[configs["method"] != "base"]
    gain = configs[f"delta_{metric}_vs_base"] * (1 if higher else -1)
    out = pd.DataFrame({"configuration": configs["configuration"], f"gain ({metric})": gain})
    for column in configs:
        if column.startswith("delta_retention_") and column.endswith("_vs_base"):
            measure = column.removeprefix("delta_").removesuffix("_vs_base")
            forgot = configs[column].map(lambda d, m=measure: retention.forgetting(d, m))
            name = measure.removeprefix("retention_")
            out[f"forgot {name}"] = forgot
            out[f"forgot {name} / gain"] = forgot / gain.where(gain > 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "experiment", nargs="?", type=Path, default=REPO / "experiments" / "smoke.yaml"
    )
    parser.add_argument("--results", type=Path, help="a finished results folder: do not run")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seeds", type=int, nargs="+", help="replace training.seeds")
    parser.add_argument("--workdir", type=Path, help="run there and keep it (default: scratch)")
    parser.add_argument(
        "--kernels",
        choices=("native", "narrower"),
        default="native",
        help="narrower: PyTorch, oneDNN and MKL held to the next narrower instruction set",
    )
    parser.add_argument(
        "--base-only",
        action="store_true",
        help="evaluate the untuned models only: the cost, without training (no forgetting)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        env, kernels = {**os.environ, "HF_HUB_OFFLINE": "1"}, "native"
        if args.kernels == "narrower":
            from kernel_paths import narrower_env

            env, kernels = narrower_env(env)
        root = args.results or run(
            args.experiment.resolve(), workdir, args.seeds, args.base_only, env
        )
        cost = jobs(root)
        devices = trained_on(root)
        table = (root / "comparison.csv").is_file()
        forgot = forgetting(root) if table else None
        configs = by_configuration(root) if table else None
        per_gain = per_unit_of_gain(root, args.experiment) if table else None
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
    path = args.experiment.resolve()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    extra = f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds else ""
    extra += " --base-only" if args.base_only else ""
    extra += " --kernels narrower" if args.kernels == "narrower" else ""
    seeds = " ".join(map(str, args.seeds)) if args.seeds else "as in the experiment"
    load = (
        ""
        if args.results
        else f"- Load average (1 min) at the end of the run: {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores (other work on the machine slows every job alike).\n"
    )
    verdict = "within" if share_job <= LIMIT else "OVER"
    text = (
        f"# Retention scoring's cost: {args.experiment.name}\n\n"
        f"- Measured: {measured_on()}; CPU kernels: {kernels}; {devices}\n"
        f"- Command: `python benchmarks/retention_cost.py {shown}{extra}`\n"
        "- Job seconds: Snakemake's wall time of each evaluation job (process start, model "
        "load, scoring); scoring seconds: the task's scoring and retention inside it; retention "
        "seconds: the retention sets alone (`retention_seconds` of each result).\n"
        f"- Verdict: retention is {share_job:.1%} of evaluation job time, {verdict} the "
        f"{LIMIT:.0%} budget (set for the default experiment).\n"
        + load
        + "\n"
        + summary.to_markdown(index=False)
        + "\n\n## Each evaluation job\n\n"
        + cost.round(2).to_markdown(index=False)
        + "\n"
    )
    if forgot is not None:
        text += (
            f"\n## Forgetting (delta vs the untuned model, each run; seeds {seeds})\n\n"
            + forgot.round(3).to_markdown(index=False)
            + "\n\n## By configuration: mean change vs the untuned model "
            "[95% interval over seeds]\n\n" + configs.to_markdown(index=False) + "\n"
            "\n## Forgetting per unit of gain (means over seeds; a loss's rise, an accuracy's "
            "fall; empty where there was no gain)\n\n"
            + per_gain.round(3).to_markdown(index=False)
            + "\n"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
