"""The learning-rate search: the learning rate each searched configuration is reported at,
chosen on the validation split, never on test.

A methods entry whose learning_rate is a range ({low, high, points}) trains one ordinary run per
learning rate (matrix.py marks them `lr_search`). Its configurations (everything but the
learning rate and the seed) are each reported at one of them: the learning rate with the lowest
validation loss, the mean over seeds of the loss every SFT run computes on the validation split
at the end of training (training/train.py). Only a learning rate whose every seed finished with a
validation loss can be chosen; ties go to the smaller learning rate. The other learning rates
stay rows of the table (comparison_by_config.csv) but are not candidates of the
recommendation, its P(best) or the charts: no test score decides anything.

Kept apart from the report because successive halving (halving.py) ranks the same
validation scores within a method to promote runs from one rung to the next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from tunebench.matrix import SHOWN_AXES

# What chooses a learning rate (lower is better): the validation loss at the end of training.
SCORE = "validation_loss"
# A search is the runs that differ only in learning rate and seed.
GROUP_KEYS = [axis for axis in SHOWN_AXES if axis not in ("learning_rate", "seed")]
# The columns choose() adds to the configurations.
COLUMNS = ("lr_chosen", "lr_tried", "lr_chosen_by", "lr_why", "candidate")


@dataclass(frozen=True)
class Point:
    """One learning rate of a search: its mean validation score over seeds, or why it cannot
    be chosen ("" when it can)."""

    learning_rate: float
    score: float
    why: str = ""


def point(learning_rate: float, status: str, seeds: int, scored: int, score: float) -> Point:
    """A learning rate of a configuration with `seeds` runs, `scored` of which finished with
    a validation score (mean `score`); `status`: the configuration's (ok when all finished)."""
    if status != "ok":
        return Point(learning_rate, score, status)
    if scored < seeds or pd.isna(score):
        return Point(learning_rate, score, f"no {SCORE}")
    return Point(learning_rate, float(score))


def best(points: list[Point]) -> Point | None:
    """The point with the lowest score among those that can be chosen (ties: the smaller
    learning rate); None when none can."""
    eligible = [p for p in points if not p.why and math.isfinite(p.score)]
    return min(eligible, key=lambda p: (p.score, p.learning_rate), default=None)


def tried(points: list[Point], chosen: Point | None) -> str:
    """The learning rates tried, smallest first, each with its score or why it was not
    eligible; the chosen one starred: `1e-05 (2.31), 0.0001 (1.98)*, 0.001 (failed)`."""
    shown = []
    for p in sorted(points, key=lambda p: p.learning_rate):
        mark = "*" if p == chosen else ""
        shown.append(f"{p.learning_rate:g} ({p.why or f'{p.score:.4g}'}){mark}")
    return ", ".join(shown)


def choose(configs: pd.DataFrame) -> pd.DataFrame:
    """The configurations (configurations.py) with the search's columns: per searched row the
    group's chosen learning rate, the learning rates tried, what chose, why none could be chosen;
    `candidate`: whether the recommendation may consider the row (every row not searched, and
    the chosen learning rate of each search)."""
    out = configs.copy()
    out["lr_chosen"] = math.nan
    out["lr_tried"] = ""
    out["lr_chosen_by"] = ""
    out["lr_why"] = ""
    out["candidate"] = True
    searched = out["lr_search"].fillna(False).astype(bool) if "lr_search" in out else None
    if searched is None or not searched.any():
        out["lr_search"] = False
        return out
    for _, group in out[searched].groupby(GROUP_KEYS, dropna=False, sort=False):
        points = {
            index: point(
                row["learning_rate"],
                row["status"],
                int(row["seeds"]),
                int(row.get("validation_scored", row["finished"])),
                row.get(SCORE, math.nan),
            )
            for index, row in group.iterrows()
        }
        chosen = best(list(points.values()))
        for index, p in points.items():
            out.at[index, "lr_tried"] = tried(list(points.values()), chosen)
            out.at[index, "lr_chosen_by"] = SCORE
            out.at[index, "candidate"] = p == chosen
            if chosen is None:
                out.at[index, "lr_why"] = f"no learning rate has a {SCORE} over all its seeds"
            else:
                out.at[index, "lr_chosen"] = chosen.learning_rate
    return out


def at_chosen(rows: pd.DataFrame) -> pd.DataFrame:
    """Configurations a selector matched: the learning rates of one search stand for its
    validation-chosen one (a published number is compared with the search's answer)."""
    if len(rows) < 2 or not rows["lr_search"].all():
        return rows
    if len(rows.groupby(GROUP_KEYS, dropna=False)) > 1 or rows["candidate"].sum() != 1:
        return rows
    return rows[rows["candidate"]]


def for_output(configs: pd.DataFrame) -> pd.DataFrame:
    """The configurations as comparison_by_config.csv and the HTML report show them: without
    the bookkeeping columns, and without the search's columns when nothing was searched."""
    hidden = ["validation_scored", "lr_group"]
    if not configs["lr_search"].any():
        hidden += ["lr_search", *COLUMNS]
    return configs.drop(columns=hidden, errors="ignore")


def searches(configs: pd.DataFrame) -> pd.DataFrame:
    """One row per search of the configurations (after choose()): its name, the learning rate
    chosen (or why none) and the learning rates tried, each with its score."""
    rows = []
    for _, group in configs[configs["lr_search"]].groupby(GROUP_KEYS, dropna=False, sort=False):
        first = group.iloc[0]
        chosen = first["lr_chosen"]
        rows.append(
            {
                "configuration": first.get("lr_group", first["configuration"]),
                "chosen": first["lr_why"] if pd.isna(chosen) else f"learning rate {chosen:g}",
                "tried": f"lowest mean {SCORE} of {first['lr_tried']}",
            }
        )
    return pd.DataFrame(rows, columns=["configuration", "chosen", "tried"])
