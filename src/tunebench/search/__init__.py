"""Searches on the validation split, never on test: each configuration's learning rate
(lr.py, re-exported here for the report) and successive halving under a budget (halving.py)."""

from tunebench.search.lr import (
    COLUMNS,
    GROUP_KEYS,
    SCORE,
    Point,
    at_chosen,
    best,
    choose,
    for_output,
    point,
    searches,
    tried,
)

__all__ = [
    "COLUMNS",
    "GROUP_KEYS",
    "SCORE",
    "Point",
    "at_chosen",
    "best",
    "choose",
    "for_output",
    "point",
    "searches",
    "tried",
]
