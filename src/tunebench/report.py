"""Rule compile: one row per run and per untuned baseline, rebuilt from the per-run result files
(never appended to), as CSV, Markdown and HTML, plus a quality-vs-memory plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tunebench import layout, measure, slurm
from tunebench.io import atomic_path, read_json
from tunebench.matrix import SHOWN_AXES, baselines, dataset_key, expand, model_key
from tunebench.metrics import METRIC_NAMES
from tunebench.spec import Experiment

IDENTITY = ["run_id", *SHOWN_AXES, "status", "reason"]
# Metric columns, each followed by its delta vs the untuned base model, go between these two.
MEASURES = [
    "test_loss",
    "test_perplexity",
    "validation_loss",
    "peak_memory_gb",
    "memory_kind",
    "predicted_peak_gb",
    "predicted_peak_error_pct",
    "predicted_step_seconds",
    "measured_step_seconds",
    "mfu",
    "train_seconds",
    "tokens_per_second",
    "trainable_params",
    "total_params",
    "trainable_percent",
    "accelerator",
    "accelerator_hours",
    "cost",
    "test_examples",
    "test_sha256",
]


def _read(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _status(train: dict | None, evaluation: dict | None) -> tuple[str, str]:
    if train is not None and train.get("status") != "ok":
        return train["status"], train.get("reason", "")
    if evaluation is None or "status" not in evaluation:
        return "missing", "no evaluation result"
    return evaluation["status"], evaluation.get("reason", "")


def _row(axes: dict, train: dict | None, evaluation: dict | None, exp: Experiment) -> dict:
    status, reason = _status(train, evaluation)
    evaluation = evaluation or {}
    source = train or evaluation
    hw = source.get("provenance", {}).get("hardware", {})
    row = {
        **{k: axes.get(k) for k in SHOWN_AXES},
        "run_id": (train or evaluation).get("run_id"),
        "status": status,
        "reason": reason,
        **{metric: evaluation.get(metric) for metric in METRIC_NAMES},
        **{k: v for k, v in evaluation.items() if k.startswith("lm_eval/")},
        "test_loss": evaluation.get("loss"),
        "test_perplexity": evaluation.get("perplexity"),
        "test_examples": evaluation.get("examples"),
        "test_sha256": evaluation.get("test_sha256"),
        "accelerator": hw.get("accelerator"),
    }
    memory_source = train if train is not None else evaluation
    row["peak_memory_gb"] = memory_source.get("peak_memory_gb")
    row["memory_kind"] = memory_source.get("memory_kind")
    if train is not None:
        row.update(
            {
                k: train.get(k)
                for k in (
                    "validation_loss",
                    "train_seconds",
                    "tokens_per_second",
                    "trainable_params",
                    "total_params",
                    "accelerator_hours",
                )
            }
        )
        # The estimate made from the configuration alone, beside the measurement (errors and
        # MFU only on a GPU: a CPU run's memory is its process RSS, not comparable).
        row.update(
            {
                k: train.get("prediction", {}).get(k)
                for k in (
                    "predicted_peak_gb",
                    "predicted_peak_error_pct",
                    "predicted_step_seconds",
                    "measured_step_seconds",
                    "mfu",
                )
            }
        )
        if train.get("trainable_params") and train.get("total_params"):
            row["trainable_percent"] = 100 * train["trainable_params"] / train["total_params"]
        price = measure.price_per_hour(exp.cost.price_per_hour, row["accelerator"] or "")
        if price is not None and train.get("accelerator_hours") is not None:
            row["cost"] = price * train["accelerator_hours"]
    return row


def comparison_table(exp: Experiment, root: Path) -> pd.DataFrame:
    rows = []
    for model, dataset in baselines(exp):
        path = root / layout.BASELINE_RESULT.format(
            model=model_key(model), dataset=dataset_key(dataset)
        )
        # A baseline whose job never ran (killed, or its inputs failed) is a `missing` row.
        evaluation = _read(path) or {"run_id": f"base-{model.name}-{dataset.name}"}
        rows.append(
            _row(
                {"model": model.name, "dataset": dataset.name, "method": "base"},
                None,
                evaluation,
                exp,
            )
        )
    for run in expand(exp):
        train = _read(root / layout.TRAIN_RESULT.format(run_id=run.run_id)) or {
            "run_id": run.run_id,
            "status": "missing",
            # A job killed by the scheduler writes nothing: its Slurm state says why.
            "reason": slurm.failure_reason(root / "runs" / run.run_id) or "no training result",
        }
        evaluation = _read(root / layout.EVAL_RESULT.format(run_id=run.run_id))
        rows.append(_row(run.axes(), train, evaluation, exp))
    metrics = [m for m in METRIC_NAMES if any(r.get(m) is not None for r in rows)]
    metrics += sorted({k for r in rows for k in r if k.startswith("lm_eval/")})
    metric_columns = [c for m in metrics for c in (m, f"delta_{m}_vs_base")]
    table = pd.DataFrame(rows).reindex(columns=IDENTITY + metric_columns + MEASURES)
    table.attrs["metrics"] = metrics
    keys = list(zip(table["model"], table["dataset"], strict=True))
    for metric in metrics:
        base = table[table["method"] == "base"].set_index(["model", "dataset"])[metric]
        table[f"delta_{metric}_vs_base"] = [
            value - base.get(key) if pd.notna(value) and pd.notna(base.get(key)) else None
            for value, key in zip(table[metric], keys, strict=True)
        ]
    _refuse_mismatched_test_sets(table)
    table = table.rename(columns={"cost": f"cost_{exp.cost.currency.lower()}"})
    return table


def _refuse_mismatched_test_sets(table: pd.DataFrame) -> None:
    """Rows of one dataset are comparable only if they were scored on the same examples."""
    for dataset, group in table.groupby("dataset"):
        hashes = set(group["test_sha256"].dropna())
        if len(hashes) > 1:
            raise ValueError(
                f"dataset {dataset!r}: rows were scored on different test sets "
                f"({sorted(hashes)}); re-run the stale evaluations"
            )


MARKDOWN_NOTES = """
Columns: `exact_match` is the share of held-out test prompts whose greedy generation equals the
reference; `delta_exact_match_vs_base` is the gain over the untuned base model on the same test
set; `test_loss`/`test_perplexity` are over response tokens only; `peak_memory_gb` is labelled by
`memory_kind` (`cuda_max_reserved` on a GPU, `cpu_peak_rss` = the process's peak resident memory on
a CPU, imports included: the two are not comparable); `train_seconds` is the wall time of
`trainer.train()`; `cost` is accelerator-hours x the experiment's price table.
"""


def by_configuration(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every finished configuration."""
    keys = [axis for axis in SHOWN_AXES if axis != "seed"]
    values = [*table.attrs.get("metrics", []), "test_loss", "train_seconds", "peak_memory_gb"]
    done = table[table["status"] == "ok"]
    grouped = done.groupby(keys, dropna=False, sort=False)[values]
    summary = grouped.agg(["mean", "std"])
    summary.columns = [f"{value}_{stat}" for value, stat in summary.columns]
    summary.insert(0, "seeds", grouped.size())
    return summary.reset_index()


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    shown = frame.copy()
    for col in shown.select_dtypes("float").columns:
        shown[col] = shown[col].map(lambda v: f"{v:.4g}" if pd.notna(v) else "")
    return shown.astype(object).where(shown.notna(), "")


PARTIAL = "comparison_partial"  # a table of an unfinished workflow; never the workflow target


def write_outputs(
    table: pd.DataFrame, exp: Experiment, out_dir: Path, stem: str = "comparison"
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"{stem}.csv") as tmp:
        table.to_csv(tmp, index=False)
    summary = by_configuration(table)
    with atomic_path(out_dir / f"{stem}_by_config.csv") as tmp:
        summary.to_csv(tmp, index=False)
    shown = _display(table.drop(columns=["test_sha256"]))
    text = f"# {exp.name}: comparison\n\n{exp.description}\n\n" + shown.to_markdown(index=False)
    if len(summary) and summary["seeds"].max() > 1:
        text += "\n\n## Mean and standard deviation over seeds\n\n"
        text += _display(summary).to_markdown(index=False)
    with atomic_path(out_dir / f"{stem}.md") as tmp:
        tmp.write_text(text + "\n" + MARKDOWN_NOTES)
    with atomic_path(out_dir / f"{stem}.html") as tmp:
        tmp.write_text(f"<h1>{exp.name}</h1>\n" + shown.to_html(index=False, na_rep=""))
    if stem == "comparison":
        plot_quality_vs_memory(table, out_dir / "plots" / "quality_vs_memory.png")
        for stale in out_dir.glob(f"{PARTIAL}*"):  # the finished table replaces it
            stale.unlink()


def plot_quality_vs_memory(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = (table.attrs.get("metrics") or ["test_loss"])[0]
    done = table[(table["status"] == "ok") & table[metric].notna()]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, group in done.groupby("method"):
        ax.scatter(group["peak_memory_gb"], group[metric], label=method)
        for _, r in group.iterrows():
            ax.annotate(
                f"{r['model']}" + (f" r{int(r['rank'])}" if pd.notna(r["rank"]) else ""),
                (r["peak_memory_gb"], r[metric]),
                fontsize=7,
            )
    kinds = ", ".join(sorted(done["memory_kind"].dropna().unique()))
    ax.set_xlabel(f"peak memory, GB ({kinds})")
    ax.set_ylabel(f"{metric} (held-out test split)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def compile_comparison(
    exp: Experiment, root: Path, out_dir: Path, partial: bool = False
) -> pd.DataFrame:
    table = comparison_table(exp, root)
    write_outputs(table, exp, out_dir, PARTIAL if partial else "comparison")
    return table
