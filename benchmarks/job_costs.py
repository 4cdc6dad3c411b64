"""Summarise Snakemake's per-job benchmark files (the rules' `benchmark:` directive) of a
finished experiment into one figures file: wall time and peak RSS per step.

    python benchmarks/job_costs.py results/smoke  [--out benchmarks/figures/smoke-jobs.md]

Run on demand after `tunebench run`; nothing here is timed inside the test suite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from tunebench.measure import measured_on


def collect(root: Path) -> pd.DataFrame:
    frames = []
    for tsv in sorted(root.glob("benchmarks/*/*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        frame.insert(0, "job", tsv.stem)
        frame.insert(0, "rule", tsv.parent.name)
        frames.append(frame)
    if not frames:
        raise SystemExit(f"{root}: no benchmark files; run the experiment first")
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, help="results/<experiment>")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    jobs = collect(args.results)
    per_rule = jobs.groupby("rule").agg(
        jobs=("job", "count"),
        seconds_total=("s", "sum"),
        seconds_max=("s", "max"),
        max_rss_mb=("max_rss", "max"),
    )
    out = args.out or Path("benchmarks/figures") / f"{args.results.name}-jobs.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"# Job costs: {args.results}\n\nmeasured {measured_on()}\n\n"
        + per_rule.round(1).to_markdown()
        + "\n\n"
        + jobs[["rule", "job", "s", "max_rss", "cpu_time"]].round(1).to_markdown(index=False)
        + "\n"
    )
    print(per_rule.round(1).to_string())
    print(f"-> {out}")


if __name__ == "__main__":
    main()
