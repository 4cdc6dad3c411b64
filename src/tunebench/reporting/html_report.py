"""The report as one HTML file that opens offline in any browser: the recommendation, the charts
(interactive Vega-Lite, with a switch between memory, cost and time on the Pareto chart), and
the table of every run and of every configuration (sortable and filterable).

Made from a Jinja template (templates/report.html.j2) with the libraries' own offline bundles
inlined: vl-convert's Vega-Embed bundle and itables' DataTables bundle.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jinja2
import pandas as pd

from tunebench import search
from tunebench.reporting import charts, recommend

TEMPLATE = Path(__file__).with_name("templates") / "report.html.j2"
CAPTIONS = {
    "pareto": "Each point is a configuration (mean over seeds, bar: interval); the dashed line "
    "is the Pareto front, the configurations no other beats on both axes; red crosses below are "
    "runs that did not finish. Switch the x axis with the buttons.",
    "forgetting": "What each configuration gained on the task against what it forgot on a "
    "general retention set (docs/retention.md), both against the untuned model, bars: intervals "
    "over seeds; the dashed line is the Pareto front, the configurations no other beats on "
    "both (more gain, less forgetting).",
    "rank": "Quality by adapter rank on a log axis, a line per method; preference-tuned "
    "configurations (DPO, ORPO) have a line of their own; the dashed line is full fine-tuning.",
    "loss": "Training loss as logged, the band spanning the seeds of a configuration; the "
    "diamonds are the validation loss at the end of training.",
    "memory": "The estimator's predicted peak GPU memory against the measured one (on a GPU); "
    "on a CPU only the prediction exists.",
}


def _shown_number(value: float) -> str:
    """4 significant digits; whole units from 10,000 on (tokens/s, parameters), not 1.822e+04."""
    if pd.isna(value):
        return ""
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def display_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as text: numbers to 4 significant digits, missing values empty (not "nan",
    "NaN" or "None")."""
    shown = frame.copy()
    for col in shown.select_dtypes("float").columns:
        shown[col] = shown[col].map(_shown_number)
    return shown.astype(object).where(shown.notna(), "")


def _table_html(frame: pd.DataFrame) -> str:
    """A sortable, filterable table. Its cells are text, missing values empty: itables would
    show "NaN" and "None" (DataTables still sorts numeric text as numbers)."""
    from itables import to_html_datatable

    return to_html_datatable(
        display_strings(frame),
        connected=False,
        showIndex=False,
        maxBytes=0,
        scrollX=True,
        layout={"topStart": "pageLength", "topEnd": "search"},
        pageLength=50,
    )


def chart_list(table, configs, metric, higher, root: Path, exp) -> list[dict]:
    """(id, category, caption, chart) of every chart that has something to show."""
    made = [
        ("pareto", "Quality against memory, cost and time", charts.pareto(configs, metric, higher))
    ]
    made.append(
        ("forgetting", "Gain against forgetting", charts.forgetting(configs, metric, higher, exp))
    )
    made.append(("rank", "Rank sweep", charts.rank_sweep(configs, metric)))
    history = charts.loss_history(table, configs, root)
    made.append(("loss", "Training loss", charts.loss_curves(history)))
    made.append(("memory", "Memory estimate", charts.memory_check(table)))
    return [
        {"id": cid, "category": category, "caption": CAPTIONS[cid], "chart": chart}
        for cid, category, chart in made
        if chart is not None
    ]


def render(exp, table, configs, answers, root: Path, partial: bool = False, reproduced=None) -> str:
    import itables.options
    import vl_convert
    from itables.javascript import generate_init_offline_itables_html

    metric, higher = recommend.ranking_metric(exp)
    currency = exp.cost.currency
    # The charts show each searched configuration at its validation-chosen learning rate.
    made = chart_list(table, configs[configs["candidate"]], metric, higher, root, exp)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(TEMPLATE.read_text())
    by_config = search.for_output(configs).drop(columns=["run_ids"]).dropna(axis=1, how="all")

    def describe(choice) -> str:
        return recommend.describe(choice, metric, currency).replace("**", "")

    return template.render(
        exp=exp,
        metric=metric,
        higher=higher,
        answers=answers,
        limits=lambda b: recommend.limits(b, currency),
        describe=describe,
        how_sure=lambda a: [
            line.removeprefix("- ").replace("**", "") for line in recommend.how_sure(a, exp)
        ],
        charts=[c | {"spec": c["chart"].to_json(indent=None)} for c in made],
        vega_bundle=vl_convert.javascript_bundle(),
        vegalite_version=vl_convert.get_vegalite_versions()[-1],
        itables_init=generate_init_offline_itables_html(itables.options.dt_bundle),
        table_html=_table_html(table.drop(columns=["test_sha256"], errors="ignore")),
        configurations_html=_table_html(by_config),
        n_runs=int((table["method"] != "base").sum()),
        n_configs=int((configs["method"] != "base").sum()),
        written=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        root=str(root),
        partial=partial,
        reproduction=None if reproduced is None else _reproduction(reproduced, exp),
        searched=recommend.searched(exp),
        searched_note=recommend.SEARCHED,
        searches=search.searches(configs).to_dict("records"),
        preflight=_preflight(root),
    )


def _preflight(root: Path) -> dict | None:
    """`tunebench preflight`'s measurements of the experiment (preflight.json), if it ran."""
    from tunebench import layout
    from tunebench.io import read_json

    path = root / layout.PREFLIGHT / "preflight.json"
    if not path.is_file():
        return None
    found = read_json(path)
    columns, before = {}, ""
    # preflight.json names its columns and their titles (preflight.COLUMNS).
    keys = dict.fromkeys(key for shape in found["shapes"] for key in shape)  # an older file
    named = found.get("columns") or [[key, key] for key in keys]
    for key, title in named:
        # The Markdown report's "predicted" sits beside what it predicts; here it says which.
        columns[key] = f"{before}, predicted" if title == "predicted" else title
        before = title
    shapes = pd.DataFrame(found["shapes"], columns=list(columns)).rename(columns=columns)
    return {
        "where": "; ".join(
            f"GPU class {c['gpu_class']} on {c['machine']}" for c in found["classes"]
        ),
        "changes": "; ".join(found["changes"]),
        "ok": found["ok"],
        "html": _table_html(shapes),
    }


def _reproduction(rows, exp) -> dict:
    from tunebench.reporting import reproduction

    rho = reproduction.ranking_agreement(rows)
    return {
        "study": exp.reference.study,
        "hardware": exp.reference.hardware,
        "html": rows.to_html(index=False, na_rep="", float_format="{:.4g}".format),
        "spearman": "n/a (fewer than 3 quality cells)" if math.isnan(rho) else f"{rho:.2f}",
    }
