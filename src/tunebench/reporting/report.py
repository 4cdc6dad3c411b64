"""Rule compile: one row per run and per untuned baseline, rebuilt from the per-run result files
(never appended to), as CSV, Markdown and HTML; then the configurations over seeds
(configurations.py), the recommendation (recommend.py), the charts (charts.py) and the HTML
report (html_report.py) made from it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tunebench import layout, measure, outcomes, search, slurm
from tunebench.io import atomic_path, read_json
from tunebench.matrix import SHOWN_AXES, baselines, dataset_key, expand, model_key
from tunebench.metrics import METRIC_NAMES, PREFERENCE_METRICS
from tunebench.spec import Experiment

# lr_search: the run is a point of a learning-rate search (search.py chooses among them).
IDENTITY = ["run_id", *SHOWN_AXES, "lr_search", "status", "reason"]
# Metric columns, each followed by its delta vs the untuned base model, go between these two.
MEASURES = [
    "test_loss",
    "test_perplexity",
    "validation_loss",
    # A search's pruned run (search:): the rung step it stopped at, validation_loss there.
    "stopped_at_step",
    "peak_memory_gb",
    "memory_kind",
    "world_size",
    "strategy",
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
        "lr_search": bool(axes.get("lr_search", False)),
        "run_id": (train or evaluation).get("run_id"),
        "status": status,
        "reason": reason,
        **{metric: evaluation.get(metric) for metric in (*METRIC_NAMES, *PREFERENCE_METRICS)},
        **{k: v for k, v in evaluation.items() if k.startswith(("lm_eval/", "retention_"))},
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
        # How many processes trained it, and how (peak_memory_gb: the largest rank's).
        row["world_size"] = train.get("world_size", 1)
        row["strategy"] = train.get("strategy")
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
    from tunebench.search import halving, seeds

    # Adaptive seeds: the first round's runs and the seeds decisions on disk added.
    runs = seeds.decided_runs(exp, expand(exp), root)

    stopped = halving.stopped(exp, runs, root)
    for run in runs:
        train = _read(root / layout.TRAIN_RESULT.format(run_id=run.run_id))
        if train is None and run.run_id in stopped:  # pruned (or failed) at a search's rung
            where = stopped[run.run_id]
            train = where["result"] | {k: v for k, v in where.items() if k != "result"}
        train = train or {
            "run_id": run.run_id,
            "status": "missing",
            # A job killed by the scheduler writes nothing: its Slurm state says why.
            "reason": slurm.failure_reason(layout.run_dir(root, run.run_id))
            or "no training result",
        }
        evaluation = _read(root / layout.EVAL_RESULT.format(run_id=run.run_id))
        rows.append(_row(run.axes() | {"lr_search": run.lr_search}, train, evaluation, exp))
        rows[-1]["stopped_at_step"] = train.get("stopped_at_step")
    scored = (*METRIC_NAMES, *PREFERENCE_METRICS)
    metrics = [m for m in scored if any(r.get(m) is not None for r in rows)]
    metrics += sorted({k for r in rows for k in r if k.startswith("lm_eval/")})
    # Retention (retention.py): general sets, their deltas vs base are the forgetting.
    metrics += sorted(
        {k for r in rows for k in r if k.startswith("retention_") and k != "retention_seconds"}
    )
    metric_columns = [c for m in metrics for c in (m, f"delta_{m}_vs_base")]
    if "preference_margin" in metrics:
        metric_columns.append("reward_margin")
    measures = (
        MEASURES if exp.search is not None else [m for m in MEASURES if m != "stopped_at_step"]
    )
    table = pd.DataFrame(rows).reindex(columns=IDENTITY + metric_columns + measures)
    table.attrs["metrics"] = metrics
    table.attrs["seeds_why"] = seeds.why(exp, root)  # run id -> its adaptive seed verdict
    keys = list(zip(table["model"], table["dataset"], strict=True))
    for metric in metrics:
        base = table[table["method"] == "base"].set_index(["model", "dataset"])[metric]
        table[f"delta_{metric}_vs_base"] = [
            value - base.get(key) if pd.notna(value) and pd.notna(base.get(key)) else None
            for value, key in zip(table[metric], keys, strict=True)
        ]
    if "reward_margin" in table:
        table["reward_margin"] = _reward_margins(table, {r.run_id: r.start_from for r in runs})
    _refuse_mismatched_test_sets(table)
    table = table.rename(columns={"cost": f"cost_{exp.cost.currency.lower()}"})
    return table


def _reward_margins(table: pd.DataFrame, starts: dict[str, str | None]) -> list:
    """DPO's implicit reward margin on the test pairs, per dpo row: beta x (its preference
    margin - its reference's), the reference being the SFT run it started from (`starts`: run
    id -> that run's id), else the untuned model: rows of one table, scored on the same pairs."""
    margin = table.set_index("run_id")["preference_margin"]
    base = table[table["method"] == "base"].set_index(["model", "dataset"])["preference_margin"]
    margins = []
    for row in table.itertuples():
        start = starts.get(row.run_id)
        reference = margin.get(start) if start else base.get((row.model, row.dataset))
        known = pd.notna(row.preference_margin) and reference is not None and pd.notna(reference)
        dpo = row.objective == "dpo" and known
        margins.append(row.beta * (row.preference_margin - reference) if dpo else None)
    return margins


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
Columns: one row per configuration, its seeds together. `status` is `ok` when every seed
finished, `ok 2/3, oom` when some did not (its figures are over those that did), else the status
of its first seed. The
metric is the report's (`report.metric`, else the first dataset's first metric): the mean over
seeds and its interval over seeds (none with one seed); `gain vs base` is the mean gain over the
untuned base model on the same test set. `GPU memory GB` is the largest seed's peak, measured
where the run trained on a GPU, else predicted by `tunebench estimate` (a CPU run's memory is its
process RSS, not comparable); `training` is the wall time of `trainer.train()`; `cost` is
accelerator-hours x the experiment's price table. Every column of every run (each metric and its
gain, losses, tokens/s, parameters, the estimate against the measurement, ...) is in
`comparison.csv`, `comparison.html` and `report.html`; by configuration, with standard deviations,
in `comparison_by_config.csv`.
"""


PARTIAL = "comparison_partial"  # a table of an unfinished workflow; never the workflow target
EXPERIMENT_RECORD = "experiment.json"  # the experiment the results were compiled with
RECOMMENDATION, HTML_REPORT, PLOTS = layout.RECOMMENDATION, layout.HTML_REPORT, layout.PLOTS
REPRODUCTION, REPRODUCTION_CSV = "reproduction.md", "reproduction.csv"  # with `reference:`


def write_outputs(
    table: pd.DataFrame,
    exp: Experiment,
    out_dir: Path,
    stem: str = "comparison",
    root: Path | None = None,
) -> None:
    """The table (CSV, Markdown, HTML), the table by configuration, the recommendation, the
    charts as PNG, and the HTML report; a partial table (stem PARTIAL) gets the same. With
    `root`, the results folder, the recommendation says how sure it is (P(best))."""
    from tunebench.reporting import configurations, decision_table, html_report, recommend

    out_dir.mkdir(parents=True, exist_ok=True)
    partial = stem == PARTIAL
    with atomic_path(out_dir / f"{stem}.csv") as tmp:
        table.to_csv(tmp, index=False)
    configs = configurations.configurations(table, exp.report.confidence)
    with atomic_path(out_dir / f"{stem}_by_config.csv") as tmp:
        search.for_output(configs).drop(columns=["run_ids"]).to_csv(tmp, index=False)
    answers = recommend.recommend(configs, exp, root)
    advice = recommend.markdown(answers, exp)
    reproduced = None
    if exp.reference is not None:
        from tunebench.reporting import reproduction

        reproduced = reproduction.compare(table, configs, exp)
        if not partial:
            with atomic_path(out_dir / REPRODUCTION_CSV) as tmp:
                reproduced.to_csv(tmp, index=False)
            with atomic_path(out_dir / REPRODUCTION) as tmp:
                tmp.write_text(reproduction.markdown(reproduced, exp))
    plots = write_plots(
        table, configs, exp, out_dir, out_dir / PLOTS, prefix="" if not partial else f"{PARTIAL}_"
    )
    metric, _ = recommend.ranking_metric(exp)
    text = f"# {exp.name}: comparison\n\n" + (f"{exp.description}\n\n" if exp.description else "")
    # Each searched configuration at its validation-chosen learning rate only (search.py).
    text += decision_table.comparison_tables(
        configs[configs["candidate"]], metric, exp.cost.currency
    )
    if configs["lr_search"].any():
        text += "\n\n" + decision_table.learning_rates(configs)
    unfinished = table[~table["status"].isin(outcomes.NOT_FAILED)]
    if len(unfinished):
        text += "\n\n## Runs that did not finish\n\n" + decision_table.unfinished(unfinished)
    if (table["status"] == "pruned").any():
        text += "\n\n## Runs the search pruned\n\n" + pruned_runs(table)
    text += "\n\n" + advice.replace("# Recommendation", "## Recommendation", 1)
    if reproduced is not None:
        from tunebench.reporting import reproduction

        text += "\n" + reproduction.markdown(reproduced, exp).replace("# ", "## ", 1)
    text += "\n" + "\n".join(f"![{p.stem}]({PLOTS}/{p.name})" for p in plots) + "\n"
    with atomic_path(out_dir / f"{stem}.md") as tmp:
        tmp.write_text(decision_table.wrap(text + "\n" + MARKDOWN_NOTES))
    shown = html_report.display_strings(table.drop(columns=["test_sha256"]))
    with atomic_path(out_dir / f"{stem}.html") as tmp:
        tmp.write_text(f"<h1>{exp.name}</h1>\n" + shown.to_html(index=False, na_rep=""))
    report_name = f"{PARTIAL}_report.html" if partial else HTML_REPORT
    with atomic_path(out_dir / report_name) as tmp:
        tmp.write_text(
            html_report.render(exp, table, configs, answers, out_dir, partial, reproduced)
        )
    if not partial:
        with atomic_path(out_dir / RECOMMENDATION) as tmp:
            tmp.write_text(advice)
        with atomic_path(out_dir / EXPERIMENT_RECORD) as tmp:
            tmp.write_text(exp.model_dump_json(indent=1))
        for stale in out_dir.glob(f"{PARTIAL}*"):  # the finished table replaces it
            stale.unlink()


def pruned_runs(table: pd.DataFrame) -> str:
    """The search's pruned runs (docs/search.md), one line each: where and at what score."""
    pruned = table[table["status"] == "pruned"].sort_values(["stopped_at_step", "run_id"])
    lines = [
        "Stopped at a rung because others of their method scored better on validation "
        "(docs/search.md); they are not failures, and a larger search.budget continues them.",
        "",
    ]
    for r in pruned.itertuples():
        loss = "n/a" if pd.isna(r.validation_loss) else f"{r.validation_loss:.4g}"
        lines.append(f"- `{r.run_id}`: step {r.stopped_at_step:.0f}, validation_loss {loss}")
    # The search's own cost: every run's training up to where it stopped, the pruned included.
    hours = table.loc[table["method"] != "base", "accelerator_hours"].sum()
    lines += ["", f"Training of every run, pruned ones included: {hours:.3g} accelerator-hours."]
    return "\n".join(lines)


def write_plots(table, configs, exp, root: Path, folder: Path, prefix: str = "") -> list[Path]:
    """Each chart of the report as a PNG (the Pareto chart once per measure). The folder is
    made even when nothing can be drawn (every run failed): it is the rule's declared output."""
    from tunebench.reporting import charts, recommend

    folder.mkdir(parents=True, exist_ok=True)
    metric, higher = recommend.ranking_metric(exp)
    configs = configs[configs["candidate"]]  # a search's other learning rates are not shown
    made = []
    for axis in charts.MEASURES:
        if configs[axis].notna().any() and configs[axis].max() > 0:
            made.append((f"pareto_{axis}", charts.pareto(configs, metric, higher, axis)))
    made = [(name, chart) for name, chart in made if chart is not None]
    made.append(("forgetting", charts.forgetting(configs, metric, higher, exp)))
    made.append(("rank_sweep", charts.rank_sweep(configs, metric)))
    made.append(("loss_curves", charts.loss_curves(charts.loss_history(table, configs, root))))
    made.append(("memory_check", charts.memory_check(table)))
    paths = []
    for name, chart in made:
        if chart is not None:
            paths.append(folder / f"{prefix}{name}.png")
            charts.save_png(chart, paths[-1])
    return paths


def compile_comparison(
    exp: Experiment, root: Path, out_dir: Path, partial: bool = False
) -> pd.DataFrame:
    table = comparison_table(exp, root)
    write_outputs(table, exp, out_dir, PARTIAL if partial else "comparison", root)
    return table
