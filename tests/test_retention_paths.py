"""benchmarks/retention_paths.py: the per-unit-of-gain tables of retention_cost.py's figure
files side by side, the pairs whose order flips between paths, and the published claim pair by
pair, on hand-made figure files written as retention_cost.py writes them."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import retention_paths  # noqa: E402


def figure(path, rows):
    table = pd.DataFrame(
        rows,
        columns=["configuration", "gain (exact_match)", "forgot text_loss"],
    )
    table["forgot text_loss / gain"] = table["forgot text_loss"] / table[
        "gain (exact_match)"
    ].where(table["gain (exact_match)"] > 0)
    path.write_text(
        "# Retention scoring's cost: x.yaml\n\n- Measured: 2026-12-04 on vm, test\n\n"
        "## By configuration\n\n| configuration | seeds |\n|---|---|\n| m full | 2 |\n\n"
        "## Forgetting per unit of gain (means over seeds; a loss's rise)\n\n"
        + table.round(3).to_markdown(index=False)
        + "\n"
    )
    return path


def test_flips_and_the_claim_pair_by_pair(tmp_path):
    native = figure(
        tmp_path / "a.md",
        [("m full", 0.5, 0.10), ("m lora r8", 0.5, 0.05), ("m dora r8", 0.4, 0.02)],
    )
    narrower = figure(
        tmp_path / "b.md",
        [("m full", 0.5, 0.01), ("m lora r8", 0.5, 0.05), ("m dora r8", 0.0, 0.02)],
    )
    side, flips, claims = retention_paths.compare([native, narrower], ["n", "w"], "text_loss")
    row = side.set_index("configuration").loc["m full"]
    assert row["per gain n"] == pytest.approx(0.2) and row["rank n"] == 3
    assert row["per gain w"] == pytest.approx(0.02) and row["rank w"] == 1
    # Full over LoRA on one path and under it on the other: a flip, and the paths disagree.
    assert flips == ["m full vs m lora r8: n 0.200 > 0.100; w 0.020 <= 0.100"]
    assert "m full vs m lora r8: paths disagree" in claims
    # DoRA gained nothing on the second path: no ratio there, so no verdict across paths.
    assert "m full vs m dora r8: not comparable on every path (no gain on one)" in claims


def test_a_file_without_the_table_is_named(tmp_path):
    other = tmp_path / "kernel_paths-smoke.md"
    other.write_text("# Something else\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    good = figure(tmp_path / "a.md", [("m full", 0.5, 0.1)])
    with pytest.raises(SystemExit, match="kernel_paths-smoke.md: no 'Forgetting per unit"):
        retention_paths.compare([good, other], ["a", "b"], "text_loss")
    with pytest.raises(SystemExit, match="no column 'forgot instructions_loss / gain'"):
        retention_paths.compare([good, good], ["a", "b"], "instructions_loss")
