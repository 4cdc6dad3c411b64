"""Runs grouped into configurations: one row per configuration (everything but the seed), with
the mean, standard deviation and a t interval over seeds of every metric and of its gain over
the untuned model, and the resources a budget is judged on. The learning rates of a search are a
configuration each; search.py marks the one validation chose (`candidate`).

Memory for budgets is GPU memory: a run's measured peak where it trained on a GPU, else its
predicted peak (`tunebench estimate`), so that a rehearsal on a CPU already answers "does it fit
on a 24 GB GPU?". The column `gpu_memory_source` says which.
"""

from __future__ import annotations

import math

import pandas as pd

from tunebench import search
from tunebench.matrix import SHOWN_AXES

KEYS = [axis for axis in SHOWN_AXES if axis != "seed"]
CUDA_MEMORY = "cuda_max_reserved"


def interval(values: pd.Series, confidence: float) -> tuple[float, float, float, float]:
    """(mean, standard deviation, low, high): Student's t interval of the mean; with one value
    the deviation and interval are NaN (one seed: no interval)."""
    from scipy import stats

    values = values.dropna()
    n = len(values)
    if n == 0:
        return (math.nan,) * 4
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def _name(row: pd.Series, ambiguous_lr: bool) -> str:
    parts = [str(row["model"]), str(row["method"])]
    if pd.notna(row.get("rank")):
        parts.append(f"r{int(row['rank'])}")
    if pd.notna(row.get("quant_type")):
        parts.append(str(row["quant_type"]))
    if pd.notna(row.get("backend")) and row["backend"] not in ("hf", ""):
        parts.append(str(row["backend"]))
    if pd.notna(row.get("objective")) and row["objective"] not in ("sft", ""):
        parts.append(str(row["objective"]))
        if pd.notna(row.get("beta")):
            parts.append(f"beta {row['beta']:g}")
    if ambiguous_lr and pd.notna(row.get("learning_rate")):
        parts.append(f"lr {row['learning_rate']:g}")
    return " ".join(parts)


def gpu_memory(table: pd.DataFrame) -> pd.Series:
    """Per run: measured GPU peak where it ran on a GPU, else the predicted one."""
    measured = table["peak_memory_gb"].where(table["memory_kind"] == CUDA_MEMORY)
    return measured.fillna(table.get("predicted_peak_gb"))


def configurations(table: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per configuration of the comparison table (report.comparison_table)."""
    metrics = list(table.attrs.get("metrics", []))
    # A table of another origin (a test's, an older tunebench's) may lack an axis: empty.
    table = table.assign(**{key: None for key in KEYS if key not in table})
    if "lr_search" not in table:
        table = table.assign(lr_search=False)
    values = [
        *metrics,
        *[f"delta_{m}_vs_base" for m in metrics],
        "test_loss",
        "test_perplexity",
        "validation_loss",
        "reward_margin",
    ]
    cost = next((c for c in table.columns if c.startswith("cost_")), None)
    table = table.assign(
        gpu_memory_gb=gpu_memory(table),
        gpu_memory_source=(table["memory_kind"] == CUDA_MEMORY).map(
            {True: "measured", False: "predicted"}
        ),
    )
    # Full fine-tuning has no rank: -1 stands for it (a NaN key is never found again).
    ranked = table.assign(rank=table["rank"].fillna(-1))
    per_method = ranked.groupby(["model", "dataset", "method", "rank"])
    ambiguous = per_method["learning_rate"].nunique(dropna=True).gt(1)
    rows = []
    for key, group in table.groupby(KEYS, dropna=False, sort=False):
        first = group.iloc[0]
        done = group[group["status"] == "ok"]
        failed = group[group["status"] != "ok"]
        # A configuration a search pruned keeps the validation score it was stopped at.
        pruned = (group["status"] == "pruned").all()
        rank = -1 if pd.isna(first["rank"]) else first["rank"]
        lr_key = (first["model"], first["dataset"], first["method"], rank)
        row = dict(zip(KEYS, key, strict=True))
        row |= {
            "configuration": _name(first, bool(ambiguous.get(lr_key, False))),
            # A point of a learning-rate search (search.py), and the search's name.
            "lr_search": bool(group["lr_search"].fillna(False).astype(bool).any()),
            "lr_group": _name(first, False),
            "seeds": len(group),
            "finished": len(done),
            "status": "ok" if failed.empty else str(failed.iloc[0]["status"]),
            "reason": "" if failed.empty else str(failed.iloc[0]["reason"]),
            "run_ids": list(group["run_id"]),
            "gpu_memory_gb": group["gpu_memory_gb"].max(),  # the worst seed must fit
            "gpu_memory_source": first["gpu_memory_source"],
            "hours": done["accelerator_hours"].mean() if len(done) else math.nan,
            "cost": done[cost].mean() if cost and len(done) else math.nan,
            "train_seconds": done["train_seconds"].mean() if len(done) else math.nan,
            "trainable_params": first.get("trainable_params"),
            "validation_scored": int(done["validation_loss"].notna().sum())
            if "validation_loss" in done
            else 0,
        }
        if "stopped_at_step" in group:
            row["stopped_at_step"] = group["stopped_at_step"].max()
        for value in values:
            if value not in group:
                continue
            scored = group if pruned and value == "validation_loss" else done
            mean, sd, low, high = interval(scored[value].astype(float), confidence)
            row |= {value: mean, f"{value}_sd": sd, f"{value}_low": low, f"{value}_high": high}
        rows.append(row)
    verdicts = table.attrs.get("seeds_why") or {}
    if verdicts:  # adaptive seeds: how many each configuration got, and why (search/seeds.py)
        _seeds_why(rows, verdicts)
    # Each searched configuration at the learning rate validation chose (search.py).
    out = search.choose(pd.DataFrame(rows))
    out.attrs = dict(table.attrs) | {"confidence": confidence, "cost_column": cost}
    return out


def _seeds_why(rows: list[dict], verdicts: dict) -> None:
    """Each row's `seeds_why`: "3 seeds: still in contention with X at round 2", the leader
    named as the table names it."""
    from tunebench.search.seeds import reason

    names = {run_id: row["configuration"] for row in rows for run_id in row["run_ids"]}
    for row in rows:
        verdict = next((verdicts[r] for r in row["run_ids"] if r in verdicts), None)
        if verdict is None:
            row["seeds_why"] = ""
            continue
        n = verdict["seeds"]
        words = reason(verdict, lambda key: names.get(key, key))
        row["seeds_why"] = f"{n} seed{'s' if n != 1 else ''}: {words}"
