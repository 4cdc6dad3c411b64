"""What the matrix trains beyond its grid, and what is chosen from it. On the validation split,
never on test: each configuration's learning rate (lr.py, re-exported here for the report) and
successive halving under a budget (halving.py). Adaptive seeds (seeds.py) decide on test
scores, but only how much evidence to gather: they choose nothing, and the recommendation's
best and P(best) are over every seed trained."""

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
