"""Published against reproduced: one row per cell of the experiment's `reference:` block, with
the delta, the tolerance and a verdict, and how well the ranking of configurations agrees.

- Quality (a metric or loss) is compared in absolute units, memory relatively: both transfer
  between GPUs. Time and throughput do not: where the runs' GPU is not the published one, each
  is compared as a ratio to the first cell of the same measure, and the row says so.
- A verdict says "within tolerance" or "outside tolerance"; a cell whose configuration did not
  finish says so; a rehearsal (a tiny model standing in for the published one) is never
  comparable, whatever its numbers.
- Rankings reproduce better than absolute numbers: Spearman's correlation between the published
  and reproduced values of the quality cells (three or more).
"""

from __future__ import annotations

import math

import pandas as pd

from tunebench import search
from tunebench.matrix import expand, referenced_runs
from tunebench.reporting.configurations import CUDA_MEMORY
from tunebench.reporting.decision_table import markdown_table
from tunebench.spec import LOWER_IS_BETTER, RESOURCE_MEASURES, Experiment

REHEARSAL = "rehearsal: not comparable"


MEMORY_MEASURES = ("peak_memory_gb", "peak_memory_allocated_gb")
# A run with random weights measures memory and speed; its quality means nothing.
QUALITY_NOT_CLAIMED = "resources mode: quality not claimed"


def _kind(measure: str) -> str:
    if measure in MEMORY_MEASURES:
        return "memory"
    return "time" if measure in RESOURCE_MEASURES else "quality"


def _matching(configs: pd.DataFrame, runs: list) -> pd.DataFrame:
    """The configurations (rows of comparison_by_config) that hold any of `runs`: selectors
    match runs by every field a selector may name (label included), not only table columns.
    The learning rates of one search stand for its validation-chosen one."""
    wanted = {run.run_id for run in runs}
    holds = configs["run_ids"].map(lambda ids: bool(wanted.intersection(ids)))
    return search.at_chosen(configs[holds & (configs["method"] != "base")])


def _reproduced(table: pd.DataFrame, config_row: pd.Series, measure: str) -> float:
    """The configuration's value of `measure`: the mean over its finished seeds (peak memory
    only where it was measured on a GPU)."""
    runs = table[table["run_id"].isin(config_row["run_ids"]) & (table["status"] == "ok")]
    if measure in MEMORY_MEASURES:
        runs = runs[runs["memory_kind"] == CUDA_MEMORY]
    values = runs[measure].dropna() if measure in runs else pd.Series(dtype=float)
    return float(values.mean()) if len(values) else math.nan


def compare(table: pd.DataFrame, configs: pd.DataFrame, exp: Experiment) -> pd.DataFrame:
    """One row per reference cell: published | reproduced | delta | tolerance | verdict."""
    ref = exp.reference
    rehearsal = ref.mode == "rehearsal"
    hardware = set(table.loc[table["method"] != "base", "accelerator"].dropna())
    same_gpu = hardware == {ref.hardware} or any(
        ref.hardware.lower() in h.lower() for h in hardware
    )
    rows, first_of = [], {}
    for cell, runs in zip(ref.cells, referenced_runs(exp, expand(exp)), strict=True):
        kind = _kind(cell.measure)
        matched = _matching(configs, runs)
        row = {
            "configuration": ", ".join(matched["configuration"]) or str(cell.run),
            "measure": cell.measure,
            "published": cell.value,
            "source": cell.source,
        }
        if len(matched) != 1:
            verdict = (
                "not reproduced: no result"
                if matched.empty
                else f"{len(matched)} configurations match {cell.run}: name one"
            )
            rows.append(row | {"verdict": verdict})
            continue
        value = _reproduced(table, matched.iloc[0], cell.measure)
        published, compared = cell.value, "absolute" if kind == "quality" else "relative"
        if kind == "time" and not same_gpu:
            first = first_of.setdefault(cell.measure, (value, cell.value))
            value, published, compared = value / first[0], cell.value / first[1], "ratio"
        first_of.setdefault(cell.measure, (value, cell.value))
        tolerance = (
            cell.tolerance
            if cell.tolerance is not None
            else {
                "quality": ref.quality_tolerance,
                "memory": ref.memory_tolerance,
                "time": ref.time_tolerance,
            }[kind]
        )
        delta = value - published if compared == "absolute" else (value - published) / published
        if ref.mode == "resources" and kind == "quality":
            verdict = QUALITY_NOT_CLAIMED  # random weights: whatever was scored means nothing
        elif math.isnan(value):
            verdict = "not reproduced: no result"
        elif rehearsal:
            verdict = REHEARSAL
        else:
            verdict = "within tolerance" if abs(delta) <= tolerance else "outside tolerance"
        rows.append(
            row
            | {
                "reproduced": value,
                "compared": compared,
                "delta": delta,
                "tolerance": tolerance,
                "verdict": verdict,
            }
        )
    out = pd.DataFrame(rows)
    out.attrs["same_gpu"] = same_gpu
    out.attrs["hardware"] = sorted(hardware)
    return out


def ranking_agreement(rows: pd.DataFrame) -> float:
    """Spearman's correlation of published and reproduced quality (NaN under 3 comparable
    cells)."""
    from scipy import stats

    # Only comparable cells: a rehearsal's or a random-weight run's quality ranks nothing.
    comparable = rows["verdict"].isin(["within tolerance", "outside tolerance"])
    quality = rows[comparable & (rows["measure"].map(_kind) == "quality")]
    if len(quality) < 3:
        return math.nan
    return float(stats.spearmanr(quality["published"], quality["reproduced"]).statistic)


def markdown(rows: pd.DataFrame, exp: Experiment) -> str:
    ref = exp.reference
    rehearsal = ref.mode == "rehearsal"
    rho = ranking_agreement(rows)
    ran_on = ", ".join(rows.attrs.get("hardware", [])) or "nothing yet"
    lines = [
        f"# Reproduction: {ref.study}",
        "",
        f"Published on {ref.hardware}; reproduced on {ran_on}."
        + (
            ""
            if rows.attrs.get("same_gpu")
            else " The GPUs differ: memory and quality are "
            "compared directly, time and throughput as ratios to the first cell of each."
        )
        + (f" **{REHEARSAL}**: a tiny stand-in model ran the pipeline." if rehearsal else "")
        + (
            " **Resources mode**: the published architecture with random weights; memory and "
            "speed only."
            if ref.mode == "resources"
            else ""
        ),
        "",
        markdown_table(rows.drop(columns=["source"]), floatfmt=".4g"),
        "",
        "Ranking agreement of the quality cells (Spearman): "
        + ("n/a (fewer than 3 cells)" if math.isnan(rho) else f"{rho:.2f}")
        + (
            ""
            if not any(m in LOWER_IS_BETTER for m in rows["measure"])
            else " (losses: lower is better)"
        ),
        "",
        "Sources:",
        *[f"- {r.configuration}, {r.measure}: {r.source}" for r in rows.itertuples()],
    ]
    return "\n".join(lines) + "\n"
