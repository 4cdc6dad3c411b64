"""The report's charts, as Vega-Lite (Altair): the same chart is interactive in the HTML report
and a static PNG beside the Markdown (vl-convert renders it, no browser needed).

- pareto: quality against GPU memory, cost or training time, one point per configuration with
  its interval, the Pareto front drawn, and the configurations that did not finish in a band of
  their own below the plot (not dropped);
- forgetting: the gain on the task against what was forgotten on a retention measure (the
  stability-plasticity trade), the Pareto front drawn: the configurations no other beats on
  both;
- rank_sweep: quality against adapter rank on a log axis, a line per method (preference-tuned
  runs a line of their own), full fine-tuning as a reference line;
- loss_curves: training loss per configuration, the band spanning its seeds, and the final
  validation loss;
- memory_check: predicted against measured peak GPU memory (runs on a GPU), else the predicted
  peaks alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import altair as alt
import pandas as pd

from tunebench import outcomes, retention

MEASURES = {
    "gpu_memory_gb": "peak GPU memory, GB (measured on a GPU, else predicted)",
    "cost": "cost per run",
    "hours": "training (accelerator-hours)",
}
WIDTH, HEIGHT = 520, 300
TITLE_END = ": Pareto front dashed; runs that did not finish in red below"


def pareto_front(points: pd.DataFrame, x: str, y: str, higher: bool) -> pd.DataFrame:
    """The configurations no other beats on both x (lower is better) and y."""
    ordered = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, not higher])
    front, best = [], -math.inf if higher else math.inf
    for _, row in ordered.iterrows():
        if (row[y] > best) if higher else (row[y] < best):
            front.append(row)
            best = row[y]
    return pd.DataFrame(front)


def _long(configs: pd.DataFrame, metric: str, higher: bool, measures: list[str]) -> tuple:
    """(finished points, front, unfinished points) in long form: one row per measure."""
    done = configs[(configs["status"] == "ok") & (configs["method"] != "base")]
    # A search's pruned configurations are not failures and have no test score: the table
    # lists them, the chart leaves them out.
    failed = configs[~configs["status"].isin(outcomes.NOT_FAILED)]
    values = done[metric].dropna()
    bottom = (values.min() - 0.1 * (values.max() - values.min() or 1)) if len(values) else 0
    points, fronts, unfinished = [], [], []
    for measure in measures:
        p = done.assign(measure=measure, x=done[measure])
        points.append(p)
        fronts.append(pareto_front(p, "x", metric, higher).assign(measure=measure))
        unfinished.append(failed.assign(measure=measure, x=failed[measure], band=bottom))
    columns = [
        "configuration",
        "method",
        "measure",
        "x",
        metric,
        f"{metric}_low",
        f"{metric}_high",
        "seeds",
        "finished",
    ]
    points = pd.concat(points)[columns]
    front = pd.concat(fronts) if any(len(f) for f in fronts) else pd.DataFrame(columns=columns)
    unfinished = pd.concat(unfinished)[
        ["configuration", "status", "reason", "measure", "x", "band"]
    ]
    return points, front.reindex(columns=columns), unfinished


def pareto(configs: pd.DataFrame, metric: str, higher: bool, measure: str | None = None):
    """With `measure` None: every measure that has values, switched by radio buttons. None
    when nothing was scored yet (no column of the metric)."""
    measures = [m for m in MEASURES if configs[m].notna().any() and configs[m].max() > 0]
    if metric not in configs or not measures:
        return None
    if measure is not None:
        measures = [measure]
    points, front, unfinished = _long(configs, metric, higher, measures)
    if measure is None:
        choice = alt.param(
            name="measure",
            value=measures[0],
            bind=alt.binding_radio(
                options=measures, labels=[MEASURES[m] for m in measures], name="x axis: "
            ),
        )
        keep = alt.datum.measure == choice
        # An axis title cannot follow a parameter: the measure's name is drawn in its place.
        label = alt.expr(_chosen_label(measures))
        said = f"{json.dumps(metric + ' against ')} + {label.expr} + {json.dumps(TITLE_END)}"
        title = alt.Title(alt.expr(said))
    else:
        choice, keep = None, alt.datum.measure == measure
        label, title = None, f"{metric} against {MEASURES[measure]}{TITLE_END}"
    x = alt.X("x:Q", title=MEASURES[measure] if measure else None, scale=alt.Scale(zero=False))
    y = alt.Y(f"{metric}:Q", title=metric, scale=alt.Scale(zero=False))
    base = alt.Chart(points).transform_filter(keep)
    dots = base.mark_point(filled=True, size=80).encode(
        x,
        y,
        color=alt.Color("method:N"),
        tooltip=[
            "configuration",
            alt.Tooltip(f"{metric}:Q", format=".3f"),
            "finished",
            alt.Tooltip("x:Q", title="x", format=".3g"),
        ],
    )
    bars = base.mark_rule().encode(
        x, alt.Y(f"{metric}_low:Q"), alt.Y2(f"{metric}_high:Q"), color="method:N"
    )
    line = (
        alt.Chart(front)
        .transform_filter(keep)
        .mark_line(color="gray", strokeDash=[4, 3])
        .encode(x, y)
    )
    labels = base.mark_text(dy=-10, fontSize=9, color="#444").encode(x, y, text="configuration")
    layers = [line, bars, dots, labels]
    if len(unfinished):
        band = alt.Chart(unfinished).transform_filter(keep)
        layers.append(
            band.mark_point(shape="cross", size=90, color="firebrick").encode(
                x, alt.Y("band:Q"), tooltip=["configuration", "status", "reason"]
            )
        )
        layers.append(
            band.mark_text(dy=-12, color="firebrick", fontSize=10).encode(
                x, alt.Y("band:Q"), text="status:N"
            )
        )
    if label is not None:
        below = alt.Chart(pd.DataFrame({"at": [0]}))  # one mark, placed in pixels
        layers.append(
            below.mark_text(text=label, x=WIDTH / 2, y=HEIGHT + 30, fontSize=11, fontWeight="bold")
        )
    chart = alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title=title)
    return chart.add_params(choice) if choice is not None else chart


def _chosen_label(measures: list[str]) -> str:
    """A Vega expression: the name of the measure the `measure` parameter holds."""
    cases = [f"measure === {json.dumps(m)} ? {json.dumps(MEASURES[m])} : " for m in measures]
    return "(" + "".join(cases) + "'')"


def forgetting_measure(configs: pd.DataFrame, exp) -> str | None:
    """The retention measure the chart shows: the first budget's max_forgetting measure, else
    the first scored of text, instructions, choice, then any other."""
    named = [b.max_forgetting.measure for b in exp.report.budgets if b.max_forgetting]
    shipped = [retention.measure_name(n, n) for n in retention.SHIPPED]
    others = sorted(c for c in configs if c.startswith("retention_") and "_vs_" not in c)
    for measure in [*named, *shipped, *others]:
        column = f"delta_{measure}_vs_base"
        if column in configs and configs[column].notna().any():
            return measure
    return None


def forgetting(configs: pd.DataFrame, metric: str, higher: bool, exp):
    """Gain on the task (the metric's delta vs the untuned model, else the metric itself)
    against forgetting on a retention measure, the Pareto front dashed; None without both."""
    measure = forgetting_measure(configs, exp)
    done = configs[(configs["status"] == "ok") & (configs["method"] != "base")]
    if measure is None or metric not in configs or done.empty:
        return None
    gain = f"delta_{metric}_vs_base"
    y = gain if gain in done and done[gain].notna().any() else metric
    delta = f"delta_{measure}_vs_base"
    sign = 1 if retention.lower_is_better(measure) else -1
    low, high = (f"{delta}_low", f"{delta}_high")[::sign]
    points = pd.DataFrame(
        {
            "configuration": done["configuration"],
            "method": done["method"],
            "forgot": sign * done[delta],
            "forgot_low": sign * done.get(low, math.nan),
            "forgot_high": sign * done.get(high, math.nan),
            "quality": done[y],
            "quality_low": done.get(f"{y}_low", math.nan),
            "quality_high": done.get(f"{y}_high", math.nan),
            "finished": done["finished"],
        }
    ).dropna(subset=["forgot", "quality"])
    if points.empty:
        return None
    # Less forgetting and more quality are better: the front of pareto_front's own kind.
    front = pareto_front(points, "forgot", "quality", higher)
    x = alt.X("forgot:Q", title=f"forgot: {measure}, {FORGOT_SAYS[sign]}")
    title_y = f"gain in {metric} vs the untuned model" if y == gain else metric
    yaxis = alt.Y("quality:Q", title=title_y, scale=alt.Scale(zero=False))
    base = alt.Chart(points)
    dots = base.mark_point(filled=True, size=80).encode(
        x,
        yaxis,
        color=alt.Color("method:N"),
        tooltip=[
            "configuration",
            alt.Tooltip("quality:Q", title=title_y, format=".3f"),
            alt.Tooltip("forgot:Q", format=".3g"),
            "finished",
        ],
    )
    layers = [
        alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(color="#bbb").encode(x=alt.X("zero:Q")),
        alt.Chart(front).mark_line(color="gray", strokeDash=[4, 3]).encode(x, yaxis),
        base.mark_rule().encode(x, alt.Y("quality_low:Q"), alt.Y2("quality_high:Q")),
        base.mark_rule().encode(alt.X("forgot_low:Q"), alt.X2("forgot_high:Q"), yaxis),
        dots,
        base.mark_text(dy=-10, fontSize=9, color="#444").encode(x, yaxis, text="configuration"),
    ]
    return alt.layer(*layers).properties(
        width=WIDTH,
        height=HEIGHT,
        title=f"{title_y} against forgetting ({measure}); dashed: the Pareto front",
    )


# What a positive forgetting is, by the measure's sign (1: a loss, -1: an accuracy).
FORGOT_SAYS = {
    1: "the loss's rise (right: forgot more)",
    -1: "the accuracy's fall (right: forgot more)",
}


def series(configs: pd.DataFrame) -> pd.Series:
    """What a configuration's line is: its method for supervised fine-tuning; a
    preference-tuned one (dpo, orpo) has its own, e.g. "lora + dpo", not a second point on
    the SFT line of its rank."""
    objective = configs["objective"] if "objective" in configs else pd.Series(index=configs.index)
    preference = objective.notna() & ~objective.isin(["sft", ""])
    return configs["method"].where(~preference, configs["method"] + " + " + objective.astype(str))


def rank_sweep(configs: pd.DataFrame, metric: str):
    if metric not in configs:
        return None
    done = configs[(configs["status"] == "ok") & configs[metric].notna()]
    done = done.assign(series=series(done))
    adapters = done[done["rank"].notna()]
    if adapters.empty:
        return None
    x = alt.X("rank:Q", scale=alt.Scale(type="log", base=2), title="adapter rank (log scale)")
    y = alt.Y(f"{metric}:Q", title=metric, scale=alt.Scale(zero=False))
    color = alt.Color("series:N", title="method (objective)")
    sweep = alt.Chart(adapters).encode(x, y, color=color, tooltip=["configuration", f"{metric}:Q"])
    layers = [
        sweep.mark_line(point=True),
        sweep.mark_rule().encode(alt.Y(f"{metric}_low:Q"), alt.Y2(f"{metric}_high:Q")),
    ]
    full = done[done["series"] == "full"]  # full fine-tuning by SFT: the reference line
    if len(full):
        layers.append(
            alt.Chart(full)
            .mark_rule(strokeDash=[6, 4], color="black")
            .encode(y=f"{metric}:Q", tooltip=["configuration", f"{metric}:Q"])
        )
    return alt.layer(*layers).properties(
        width=WIDTH,
        height=HEIGHT,
        title=f"{metric} by rank; dashed: full fine-tuning; preference-tuned runs apart",
    )


def loss_history(table: pd.DataFrame, configs: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Logged training loss of every finished run, and its validation loss at the end,
    labelled with its configuration."""
    from tunebench import layout
    from tunebench.io import read_json

    name_of = {rid: row["configuration"] for _, row in configs.iterrows() for rid in row["run_ids"]}
    rows = []
    for run_id in table.loc[table["status"] == "ok", "run_id"]:
        path = root / layout.TRAIN_RESULT.format(run_id=run_id)
        if not path.is_file() or run_id not in name_of:
            continue
        result = read_json(path)
        point = {"configuration": name_of[run_id], "run_id": run_id}
        for entry in result.get("log_history", []):
            if "loss" in entry and "step" in entry:
                rows.append(
                    point | {"step": entry["step"], "loss": entry["loss"], "split": "train"}
                )
        if result.get("validation_loss") is not None and result.get("steps"):
            rows.append(
                point
                | {
                    "step": result["steps"],
                    "loss": result["validation_loss"],
                    "split": "validation",
                }
            )
    return pd.DataFrame(rows)


def loss_curves(history: pd.DataFrame):
    if history.empty:
        return None
    train = alt.Chart(history).transform_filter(alt.datum.split == "train")
    train = train.encode(alt.X("step:Q"), color="configuration:N")
    band = train.mark_area(opacity=0.25).encode(
        alt.Y("min(loss):Q", title="loss"), alt.Y2("max(loss):Q")
    )
    line = train.mark_line().encode(alt.Y("mean(loss):Q"))
    final = (
        alt.Chart(history)
        .transform_filter(alt.datum.split == "validation")
        .mark_point(shape="diamond", size=90, filled=True)
        .encode(
            alt.X("step:Q"),
            alt.Y("mean(loss):Q"),
            color="configuration:N",
            tooltip=["configuration", alt.Tooltip("mean(loss):Q", title="validation loss")],
        )
    )
    return alt.layer(band, line, final).properties(
        width=WIDTH,
        height=HEIGHT,
        title="training loss (mean over seeds; band: their range); diamonds: validation loss",
    )


def memory_check(table: pd.DataFrame):
    runs = table[(table["method"] != "base") & table["predicted_peak_gb"].notna()]
    if runs.empty:
        return None
    measured = runs[runs["memory_kind"] == "cuda_max_reserved"]
    if measured.empty:
        return (
            alt.Chart(runs)
            .mark_bar()
            .encode(
                alt.X("predicted_peak_gb:Q", title="predicted peak GPU memory (GB)"),
                alt.Y("run_id:N", sort="-x", title=None),
                color="method:N",
            )
            .properties(width=WIDTH, title="predicted peak GPU memory (no run trained on a GPU)")
        )
    top = float(max(measured["peak_memory_gb"].max(), measured["predicted_peak_gb"].max()))
    diagonal = pd.DataFrame({"a": [0, top], "b": [0, top]})
    return alt.layer(
        alt.Chart(diagonal).mark_line(color="gray", strokeDash=[4, 3]).encode(x="a:Q", y="b:Q"),
        alt.Chart(measured)
        .mark_point(filled=True)
        .encode(
            alt.X("peak_memory_gb:Q", title="measured peak (GB)"),
            alt.Y("predicted_peak_gb:Q", title="predicted peak (GB)"),
            color="method:N",
            tooltip=["run_id", "peak_memory_gb", "predicted_peak_gb"],
        ),
    ).properties(width=WIDTH, height=HEIGHT, title="predicted against measured peak memory")


def save_png(chart, path: Path) -> None:
    """A static image of the chart (vl-convert: no browser)."""
    import vl_convert

    from tunebench.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(vl_convert.vegalite_to_png(chart.to_json(), scale=2))
