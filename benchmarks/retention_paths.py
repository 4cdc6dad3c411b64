"""Does a forgetting finding hold on every path it was measured on? Reads the "Forgetting per
unit of gain" table of several retention_cost.py figure files (one per CPU kernel path, or a
GPU), writes them side by side with each configuration's rank on each, and answers two
questions: which pairs of configurations swap order between the paths, and, pair by pair,
whether full fine-tuning forgot more per unit of gain than an adapter method (Biderman et al.
2024, "LoRA Learns Less and Forgets Less", arXiv:2405.09673) on every path.

    python benchmarks/retention_paths.py benchmarks/figures/retention_smollm2-contacts.md \\
        benchmarks/figures/retention_smollm2-contacts-narrower.md [more figure files] \\
        [--labels native narrower] [--measure text_loss] \\
        --out benchmarks/figures/retention_paths-smollm2-contacts.md

It reads the figure files, not results folders: those files are the record retention_cost.py
keeps (its runs happen in scratch folders), and each says where and when it was measured.
"""

from __future__ import annotations

import argparse
import io
import itertools
import re
from pathlib import Path

import kernel_paths
import pandas as pd

SECTION = "Forgetting per unit of gain"


def read_table(figure: Path) -> pd.DataFrame:
    """The per-unit-of-gain table of one retention_cost.py figure file (a pandas Markdown
    table under a heading that names it)."""
    lines = figure.read_text().splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("#") and SECTION in line), None
    )
    if start is None:
        raise SystemExit(f"{figure}: no '{SECTION}' section (not a retention_cost.py figure?)")
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2 :]))
    del rows[1]  # the rule under the header
    table = pd.read_csv(io.StringIO("\n".join(r.strip().strip("|") for r in rows)), sep="|")
    table.columns = [c.strip() for c in table.columns]
    for column in table.columns:  # cells keep Markdown's padding: " nan " is no number
        table[column] = table[column].astype(str).str.strip()
        if column != "configuration":
            table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def measured_line(figure: Path) -> str:
    found = re.search(r"^- Measured: (.*)$", figure.read_text(), re.M)
    return found.group(1) if found else "not stated"


def is_full(configuration: str) -> bool:
    return " full" in f" {configuration}"


def row(side: pd.DataFrame, configuration: str) -> pd.Series:
    return side[side["configuration"] == configuration].iloc[0]


def more_per_gain(side: pd.DataFrame, a: str, b: str, labels: list[str]) -> dict[str, bool]:
    """On each path where both have a ratio: did `a` forget more per unit of gain than `b`?"""
    row_a, row_b = row(side, a), row(side, b)
    return {
        label: bool(row_a[f"per gain {label}"] > row_b[f"per gain {label}"])
        for label in labels
        if pd.notna(row_a[f"per gain {label}"]) and pd.notna(row_b[f"per gain {label}"])
    }


def compare(
    figures: list[Path], labels: list[str], measure: str
) -> tuple[pd.DataFrame, list[str], list[str]]:
    per_gain, gain = f"forgot {measure} / gain", None
    side = None
    for figure, label in zip(figures, labels, strict=True):
        table = read_table(figure)
        if per_gain not in table:
            raise SystemExit(f"{figure}: no column '{per_gain}' (measures: {list(table)})")
        gain = gain or next(c for c in table if c.startswith("gain ("))
        part = table[["configuration", gain, f"forgot {measure}", per_gain]].rename(
            columns={
                gain: f"gain {label}",
                f"forgot {measure}": f"forgot {label}",
                per_gain: f"per gain {label}",
            }
        )
        part[f"rank {label}"] = part[f"per gain {label}"].rank(method="min").astype("Int64")
        side = part if side is None else side.merge(part, on="configuration", how="outer")
    flips = []
    for a, b in itertools.combinations(side["configuration"], 2):
        signs = more_per_gain(side, a, b, labels)
        if len(set(signs.values())) > 1:
            row_a, row_b = row(side, a), row(side, b)
            flips.append(
                f"{a} vs {b}: "
                + "; ".join(
                    f"{label} {row_a[f'per gain {label}']:.3f} {'>' if more else '<='} "
                    f"{row_b[f'per gain {label}']:.3f}"
                    for label, more in signs.items()
                )
            )
    claims = []
    full = [c for c in side["configuration"] if is_full(c)]
    adapters = [c for c in side["configuration"] if not is_full(c)]
    for f, a in itertools.product(full, adapters):
        more = list(more_per_gain(side, f, a, labels).values())
        if len(more) < len(labels):
            verdict = "not comparable on every path (no gain on one)"
        elif all(more):
            verdict = "holds on every path (full forgot more per unit of gain)"
        elif not any(more):
            verdict = "does not hold on any path (full forgot less per unit of gain)"
        else:
            verdict = "paths disagree"
        claims.append(f"{f} vs {a}: {verdict}")
    return side, flips, claims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("figures", nargs="+", type=Path, help="retention_cost.py figure files")
    parser.add_argument("--labels", nargs="+", help="a short name per file (default: its stem)")
    parser.add_argument("--measure", default="text_loss", help="a retention measure's name")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if len(args.figures) < 2:
        raise SystemExit("give two or more figure files: one per path")
    labels = args.labels or [f.stem for f in args.figures]
    if len(labels) != len(args.figures):
        raise SystemExit(f"--labels: {len(labels)} names for {len(args.figures)} figure files")
    side, flips, claims = compare(args.figures, labels, args.measure)
    shown = [kernel_paths.shown(f) for f in args.figures]
    text = (
        f"# Forgetting per unit of gain on every path: {args.measure}\n\n"
        "Read from retention_cost.py's figure files (each measured where its line says):\n\n"
        + "".join(
            f"- {label}: `{name}`, measured {measured_line(f)}\n"
            for label, name, f in zip(labels, shown, args.figures, strict=True)
        )
        + f"- Command: `python benchmarks/retention_paths.py {' '.join(shown)} "
        + (f"--labels {' '.join(labels)} " if args.labels else "")
        + f"--measure {args.measure}`\n"
        "- Forgot: the measure's rise against the untuned model (means over the seeds each file "
        "names; their intervals are in the files); per gain: forgot / gain on the task; rank 1 "
        "forgot least per unit of gain.\n\n"
        + side.round(3).to_markdown(index=False)
        + "\n\n## Pairs whose order (forgetting per unit of gain) differs between the paths\n\n"
        + ("".join(f"- {flip}\n" for flip in flips) or "- none: every path orders them alike\n")
        + "\n(Two seeds cannot separate near-equal values: compare a flip's size with the "
        "intervals over seeds in each file.)\n"
        + "\n## Full fine-tuning forgets more per unit of gain than an adapter method?\n\n"
        + ("".join(f"- {claim}\n" for claim in claims) or "- no full fine-tuning row\n")
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
