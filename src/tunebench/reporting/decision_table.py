"""The Markdown comparison's table: one row per configuration with the columns a decision needs
(status, the report's metric with its interval, the gain over the untuned model, GPU memory
measured or predicted, training time, cost), narrow enough for a terminal or a pull request.
Every other column stays in comparison.csv, comparison.html and the HTML report."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from tunebench.reporting.recommend import duration

WIDTH = 160  # characters: every line of comparison.md fits


def _number(value, fmt: str = "{:.3f}") -> str:
    return "" if value is None or pd.isna(value) else fmt.format(value)


def _cost(value) -> str:
    """3 significant digits without an exponent (0.0000697, not 6.97e-05); whole units from
    100 on."""
    if value is None or pd.isna(value):
        return ""
    if abs(value) >= 100:
        return f"{value:.0f}"
    return np.format_float_positional(value, precision=3, unique=False, fractional=False, trim="-")


def _status(row: pd.Series) -> str:
    """ok; a failed configuration's status; where some seeds finished, how many, and why the
    others did not (the metric is then over the finished ones)."""
    if row["status"] == "ok" or not row["finished"]:
        return str(row["status"])
    return f"ok {row['finished']}/{row['seeds']}, {row['status']}"


def _with_interval(row: pd.Series, metric: str) -> str:
    mean, low, high = (row.get(f"{metric}{s}") for s in ("", "_low", "_high"))
    if mean is None or pd.isna(mean):
        return ""
    interval = "" if low is None or pd.isna(low) else f" [{low:.3f}, {high:.3f}]"
    return f"{mean:.3f}{interval}"


def _memory(row: pd.Series) -> str:
    memory = row.get("gpu_memory_gb")
    if memory is None or pd.isna(memory):
        return ""
    return f"{memory:.3g} {row['gpu_memory_source']}"


def decision_rows(configs: pd.DataFrame, metric: str, currency: str) -> pd.DataFrame:
    """The configurations (configurations.py) as display strings, a column per decision."""
    gain = f"delta_{metric}_vs_base"
    confidence = configs.attrs.get("confidence", 0.95)
    return pd.DataFrame(
        {
            "configuration": configs["configuration"],
            "status": configs.apply(_status, axis=1),
            f"{metric} [{confidence:.0%} interval]": configs.apply(
                _with_interval, axis=1, metric=metric
            ),
            "gain vs base": [
                "" if method == "base" else _number(value, "{:+.3f}")
                for method, value in zip(
                    configs["method"], configs.get(gain, [None] * len(configs)), strict=True
                )
            ],
            "GPU memory GB": configs.apply(_memory, axis=1),
            "training": [
                "" if pd.isna(s) else duration(s / 3600) for s in configs["train_seconds"]
            ],
            f"cost {currency}": [_cost(v) for v in configs["cost"]],
        }
    )


def markdown_table(rows: pd.DataFrame, width: int = WIDTH, **options) -> str:
    """A pipe table (`options`: to_markdown's) no wider than `width`: configuration names too
    long lose the middle of their model's name (…), keeping the method, rank and the like
    that tell its rows apart."""
    names = rows["configuration"].astype(str)
    while True:
        text = rows.assign(configuration=names).to_markdown(index=False, **options)
        excess = max(len(line) for line in text.splitlines()) - width
        longest = int(names.str.len().max()) if len(names) else 0
        if excess <= 0 or longest <= 12:
            return text
        room = max(longest - excess, 12)
        head = 10
        shortened = names.str[:head] + "…" + names.str[-(room - head - 1) :]
        names = names.where(names.str.len() <= room, shortened)


def comparison_tables(configs: pd.DataFrame, metric: str, currency: str) -> str:
    """The decision table, one per dataset where there are several."""
    align = ["left", "left"] + ["right"] * 5  # numbers stay text: disable_numparse

    def table(of: pd.DataFrame) -> str:
        rows = decision_rows(of, metric, currency)
        return markdown_table(rows, colalign=align, disable_numparse=True)

    datasets = list(dict.fromkeys(configs["dataset"]))
    if len(datasets) == 1:
        return table(configs)
    return "\n\n".join(
        f"### Dataset {dataset}\n\n" + table(configs[configs["dataset"] == dataset])
        for dataset in datasets
    )


def learning_rates(configs: pd.DataFrame) -> str:
    """The learning-rate searches (search.py): what each chose on validation, from what (list
    items, which wrap() fits to the width however many learning rates were tried)."""
    from tunebench import search

    lines = [
        "### Learning rates chosen on validation",
        "",
        "Each configuration whose methods entry gives a learning-rate range is shown above at "
        f"the learning rate with the lowest mean {search.SCORE} over its seeds, on the "
        "validation split: no test score decides it. The others tried, with their test "
        "scores, are rows of `comparison_by_config.csv`.",
        "",
    ]
    for row in search.searches(configs).itertuples():
        lines.append(f"- {row.configuration}: {row.chosen} ({row.tried})")
    return "\n".join(lines)


def unfinished(table: pd.DataFrame, width: int = WIDTH) -> str:
    """The runs that did not finish, each with its status and reason, one line each."""
    failed = table[table["status"] != "ok"]
    lines = [
        textwrap.shorten(f"- `{r.run_id}`: {r.status}: {r.reason or 'no reason recorded'}", width)
        for r in failed.itertuples()
    ]
    return "\n".join(lines)


def wrap(markdown: str, width: int = WIDTH) -> str:
    """Prose lines (paragraphs, list items) wrapped at `width`; tables, headings and images as
    they are (a Markdown paragraph or list item may span lines)."""
    out = []
    for line in markdown.splitlines():
        if len(line) <= width or line.startswith(("|", "#", "!", "```")):
            out.append(line)
            continue
        indent = "  " if line.startswith(("- ", "* ")) else ""
        out.append(
            textwrap.fill(
                line,
                width,
                subsequent_indent=indent,
                break_long_words=False,
                break_on_hyphens=False,  # names (models, run ids) stay whole
            )
        )
    return "\n".join(out) + ("\n" if markdown.endswith("\n") else "")
