"""A real successive-halving search through `tunebench run`, against the full grid it searches:
its wall time and optimizer steps beside the grid's, and whether what it chose is what the grid
finds best.

    python benchmarks/search_replay.py --run --experiment GRID.yaml   # the grid, first
    python benchmarks/search_run.py --experiment GRID.yaml [--factor 1.5]

The search is the grid's own experiment renamed <name>-search, with search.budget.steps
`factor` times the smallest budget that works (halving.plan's minimum, as the replays price
it), run from nothing in its own results folder, on the same machine, as the same one command
a user runs. Its runs are the grid's runs (content ids), so each configuration it trained to
the end can be compared with the grid's record of it. Writes
benchmarks/figures/search_run-<grid name>.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from search_replay import (  # noqa: E402
    CORES,
    TEST_METRIC,
    WALL,
    job_fit,
    load_grid,
    plan_of,
    seed_sd,
    tie_set,
)

from tunebench import layout, measure  # noqa: E402
from tunebench.experiment import load_experiment, read_yaml  # noqa: E402
from tunebench.io import read_json  # noqa: E402

FIGURES = ROOT / "benchmarks" / "figures"


def budget_steps(grid, factor: float) -> int:
    """`factor` x the smallest budget that works for the whole grid's configurations."""
    ample = plan_of(grid, list(grid.configs), grid.exp.search.eta, grid.exp.search.min_steps, None)
    return math.ceil(factor * ample.minimum)


def write_search(grid, source: str, factor: float) -> Path:
    """The search experiment: the grid's (`source`), renamed, at the budget (under results/)."""
    settings = read_yaml(Path(source))
    settings["name"] = f"{grid.exp.name}-search"
    settings["description"] = f"{grid.exp.name} searched at {factor:g}x the smallest budget"
    settings["search"]["budget"] = {"steps": budget_steps(grid, factor)}
    path = layout.results_root(settings["name"]).with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def run_search(path: Path) -> float:
    started = time.perf_counter()
    code = subprocess.call(["tunebench", "run", str(path), "--", "--cores", str(CORES)])
    seconds = time.perf_counter() - started
    if code:
        sys.exit(f"tunebench run {path} exited {code}")
    return seconds


def searched(grid, search_exp) -> pd.DataFrame:
    """Per run of the search: its configuration, status, the step it stopped at, and (for runs
    trained to the end) its validation loss and test score."""
    table = pd.read_csv(layout.results_root(search_exp.name) / "comparison.csv")
    table = table[table["run_id"].isin(grid.runs)]
    config_of = {r.run_id: key for key, group in grid.configs.items() for r in group}
    steps = search_exp.training.max_steps
    return pd.DataFrame(
        {
            "run_id": table["run_id"],
            "configuration": table["run_id"].map(config_of),
            "bracket": table["run_id"].map(config_of).map(grid.brackets),
            "status": table["status"],
            "steps": table.get("stopped_at_step", pd.Series(dtype=float)).fillna(steps),
            "validation_loss": table["validation_loss"],
            TEST_METRIC: table.get(TEST_METRIC),
        }
    )


def choices(grid, runs: pd.DataFrame) -> list[dict]:
    """Each bracket's choice (the configuration trained to the end with the lowest mean
    validation loss, search/lr.py's rule), then the overall one, beside the grid's tie sets."""
    seeds = len(grid.exp.training.seeds)
    finished = runs[runs["status"] == "ok"]
    means = finished.groupby("configuration")[["validation_loss", TEST_METRIC]].mean()
    grid_means = grid.table.groupby("configuration")[["validation_loss", TEST_METRIC]].mean()
    out = []
    scopes = {b: grid.table[grid.table.bracket == b] for b in sorted(set(grid.brackets.values()))}
    scopes["overall"] = grid.table
    for scope, rows in scopes.items():
        keys = set(rows["configuration"])
        mine = means[means.index.isin(keys)]
        if mine.empty:
            out.append({"scope": scope, "search chose": "nothing finished"})
            continue
        chosen = mine["validation_loss"].idxmin()
        val = grid_means.loc[sorted(keys), "validation_loss"].to_dict()
        test = grid_means.loc[sorted(keys), TEST_METRIC].to_dict()
        val_ties = tie_set(val, seed_sd(rows, "validation_loss"), seeds, lower_is_better=True)
        test_ties = tie_set(test, seed_sd(rows, TEST_METRIC), seeds, lower_is_better=False)
        best = min(val, key=lambda k: (val[k], k))
        out.append(
            {
                "scope": scope,
                "search chose": label(grid, chosen),
                f"its test {TEST_METRIC}": round(float(mine.loc[chosen, TEST_METRIC]), 3),
                "grid's best on validation": label(grid, best),
                "in the grid's validation tie set": "yes" if chosen in val_ties else "NO",
                "in the grid's test tie set": "yes" if chosen in test_ties else "NO",
                "tie set sizes (validation, test)": f"{len(val_ties)}, {len(test_ties)} of "
                f"{len(keys)}",
            }
        )
    return out


def job_totals(root: Path, rules: str = "*") -> tuple[float, float]:
    """Seconds and CPU seconds of every job of an experiment (Snakemake's benchmark files, s and
    cpu_time; `rules` a glob of rule names). CPU time, unlike wall time, barely moves when other
    work shares the machine's cores."""
    files = sorted(root.glob(layout.BENCHMARK.format(rule=rules, name="*")))
    frames = [pd.read_csv(f, sep="\t") for f in files]
    return (
        float(sum(f["s"].sum() for f in frames)),
        float(sum(f["cpu_time"].sum() for f in frames)),
    )


def plain_grid_seconds(grid, root: Path, total: float) -> float:
    """The grid's job seconds had each run trained in one job, as a grid without a search does:
    its measured jobs (`total` seconds), less its training jobs (three per run here: one per
    rung), plus one training job per run from search_replay.job_fit's seconds = a + b x steps."""
    (a, b), _, _ = job_fit(root)
    training, _ = job_totals(root, "train*")  # train and train_rung
    return total - training + len(grid.table) * (a + b * grid.exp.training.max_steps)


def label(grid, key: str) -> str:
    run = grid.configs[key][0]
    rank = f" r{run.rank}" if run.rank else ""
    return f"{run.method}{rank} lr {run.learning_rate:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="the grid's experiment")
    parser.add_argument("--factor", type=float, default=1.5, help="x the smallest budget")
    parser.add_argument("--no-run", action="store_true", help="report a finished search")
    parser.add_argument("--out", type=Path, default=FIGURES)
    args = parser.parse_args()
    grid = load_grid(args.experiment)
    grid_root = layout.results_root(grid.exp.name)
    wall = read_json(grid_root / WALL)
    path = layout.results_root(f"{grid.exp.name}-search").with_suffix(".yaml")
    seconds_path = layout.results_root(f"{grid.exp.name}-search") / "search_wall.json"
    if not args.no_run:
        path = write_search(grid, args.experiment, args.factor)
        seconds = run_search(path)
        # The load when the search ended: whether other work shared the cores.
        record = {"seconds": seconds, "load_average_1min": os.getloadavg()[0]}
        seconds_path.write_text(json.dumps(record) + "\n")
    record = read_json(seconds_path)
    seconds = record["seconds"]
    search_exp = load_experiment(path)
    runs = searched(grid, search_exp)
    grid_seconds = wall["grid_seconds"] + wall["decisions_and_report_seconds"]
    grid_jobs, grid_cpu = job_totals(grid_root)
    search_jobs, search_cpu = job_totals(layout.results_root(search_exp.name))
    plain = plain_grid_seconds(grid, grid_root, grid_jobs)
    grid_steps = len(grid.table) * grid.exp.training.max_steps
    steps = int(runs["steps"].sum())
    statuses = runs["status"].value_counts().to_dict()
    lines = [
        f"# A real search against its full grid: {grid.exp.name}",
        "",
        f"Measured {measure.measured_on()}"
        + (
            f" (1-minute load average {record['load_average_1min']:.1f} when the search ended)"
            if "load_average_1min" in record
            else ""
        )
        + ". Command: `python benchmarks/search_run.py --experiment "
        f"{args.experiment} --factor {args.factor:g}` after `python benchmarks/search_replay.py "
        f"--run --experiment {args.experiment}`.",
        "",
        f"The search: `{args.experiment}` renamed `{search_exp.name}`, search.budget.steps "
        f"{search_exp.search.budget.steps:,} ({args.factor:g}x the smallest budget that works), "
        f"eta {search_exp.search.eta}, run from nothing through `tunebench run` with "
        f"`--cores {CORES}`; the grid: every configuration through every rung to the end, the "
        "same command (`search_replay.py --run`).",
        "",
        "| | wall time | seconds of its jobs | CPU time of its jobs | optimizer steps (seeds "
        "each count) | runs |",
        "|---|---|---|---|---|---|",
        f"| full grid, validated at every rung | {grid_seconds:,.0f} s | {grid_jobs:,.0f} s | "
        f"{grid_cpu:,.0f} s | {grid_steps:,} | {len(grid.table)} trained to the end |",
        f"| full grid, each run one training job (estimated) | | {plain:,.0f} s | | "
        f"{grid_steps:,} | {len(grid.table)} trained to the end |",
        f"| search | {seconds:,.0f} s ({seconds / grid_seconds:.0%}) | {search_jobs:,.0f} s "
        f"({search_jobs / plain:.0%} of the estimate) | {search_cpu:,.0f} s "
        f"({search_cpu / grid_cpu:.0%}) | {steps:,} ({steps / grid_steps:.0%}) | "
        + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        + " |",
        "",
        "Seconds and CPU time of the jobs: the sums of Snakemake's benchmark files' s and "
        "cpu_time over every job of each (data, model import, training, evaluation, decisions, "
        "report); CPU time barely moves when other work shares the cores. The grid trains each "
        "run in one job per rung (to log every rung's validation), so it starts more jobs than "
        "a grid without a search: the estimated line replaces its training jobs by one per run, "
        "priced by search_replay.py's least-squares fit over the grid's training jobs (seconds "
        "= a + b x steps), and keeps its other jobs as measured.",
        "",
        "What the search chose (lowest mean validation loss among the configurations it trained "
        "to the end) against the grid's tie sets (search_replay.py's: within 2 standard errors "
        "of the best, from the grid's seed noise):",
        "",
        pd.DataFrame(choices(grid, runs)).fillna("").to_markdown(index=False),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"search_run-{grid.exp.name}.md"
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
