"""How sure the recommendation is: P(best) of each configuration from a paired bootstrap over
the held-out test items (and over each configuration's seeds), and the minimum difference a test
set of its size can detect.

The per-item scores are the evaluation step's samples file (layout.EVAL_SAMPLES): one row per
test item, keyed by the item's id, so every configuration is resampled on the same items (the
pairing). Only metrics scored per item can be resampled: bleu and chrf are corpus scores, losses
are token-weighted over the whole split, and lm-eval tasks keep their own samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tunebench import layout
from tunebench.io import read_json, read_jsonl

RESAMPLES = 10_000  # Monte Carlo error of a P(best) near 0.9: sqrt(0.9 * 0.1 / 10_000) = 0.003
SEED = 0  # fixed: the same results folder gives the same P(best) every time
POWER = 0.8  # the conventional power of the minimum detectable difference
# The samples file's field(s) behind each per-item metric.
PER_ITEM = (
    "exact_match",
    "exact_match_normalised",
    "answer_accuracy",
    "json_match",
    "rouge_l",
    "multiple_choice_accuracy",
    "preference_accuracy",
    "preference_margin",
)


class NoItemScores(ValueError):
    """Why per-item scores of a run or configuration cannot be used (the message says)."""


def item_value(sample: dict, metric: str) -> float:
    """One test item's score, as evaluate.py aggregates it into the result's metric."""
    try:
        if metric == "multiple_choice_accuracy":
            return float(sample["picked_index"] == sample["answer_index"])
        if metric == "preference_accuracy":
            return float(bool(sample["prefers_chosen"]))
        if metric == "preference_margin":
            return float(sample["chosen_logprob"]) - float(sample["rejected_logprob"])
        value = sample[metric]
    except KeyError as missing:
        raise NoItemScores(f"item {sample.get('id')!r} has no {missing}") from None
    if value is None or isinstance(value, str):
        raise NoItemScores(f"item {sample.get('id')!r} has {metric} {value!r}")
    return float(value)


def run_item_scores(root: Path, run_id: str, metric: str) -> dict:
    """{test item id: score} of one finished run, from its samples file. Refuses a samples
    file that disagrees with the run's result (a stale or truncated file would be resampled
    as if it were the run's evaluation)."""
    if metric not in PER_ITEM:
        raise NoItemScores(f"{metric} is not scored per test item")
    path = Path(root) / layout.EVAL_SAMPLES.format(run_id=run_id)
    result_path = Path(root) / layout.EVAL_RESULT.format(run_id=run_id)
    if not path.is_file():
        raise NoItemScores(f"{run_id}: no {layout.EVAL_SAMPLES.split('/')[-1]}")
    try:
        samples = read_jsonl(path)
    except ValueError as error:
        raise NoItemScores(f"{run_id}: unreadable samples ({error})") from None
    scores = {}
    for sample in samples:
        if not isinstance(sample, dict) or not isinstance(sample.get("id"), int | str):
            raise NoItemScores(f"{run_id}: a sample without an id")
        if sample["id"] in scores:
            raise NoItemScores(f"{run_id}: test item {sample['id']!r} scored twice")
        scores[sample["id"]] = item_value(sample, metric)
    if not scores:
        raise NoItemScores(f"{run_id}: no test items")
    values = np.fromiter(scores.values(), float, len(scores))
    if not np.isfinite(values).all():
        raise NoItemScores(f"{run_id}: a {metric} that is not a finite number")
    result = read_json(result_path) if result_path.is_file() else {}
    expected, examples = result.get(metric), result.get("examples")
    if examples is not None and examples != len(scores):
        raise NoItemScores(f"{run_id}: {len(scores)} samples but {examples} test examples")
    if expected is not None and not math.isclose(values.mean(), expected, abs_tol=1e-6):
        raise NoItemScores(
            f"{run_id}: the samples' mean {metric} {values.mean():.6g} is not the result's "
            f"{expected:.6g}"
        )
    return scores


def configuration_scores(
    root: Path, run_ids: Sequence[str], metric: str
) -> tuple[tuple, np.ndarray]:
    """(item ids, scores of shape seeds x items) over a configuration's finished runs: those
    whose training and evaluation results say ok, as the table's mean counts them."""
    per_seed = []
    for run_id in run_ids:
        train = Path(root) / layout.TRAIN_RESULT.format(run_id=run_id)
        evaluation = Path(root) / layout.EVAL_RESULT.format(run_id=run_id)
        if not (train.is_file() and evaluation.is_file()):
            continue
        if read_json(train).get("status") != "ok" or read_json(evaluation).get("status") != "ok":
            continue
        per_seed.append(run_item_scores(root, run_id, metric))
    if not per_seed:
        raise NoItemScores("no finished run with per-item scores")
    ids = tuple(sorted(per_seed[0], key=repr))  # ids may be ints or strings
    if any(set(s) != set(ids) for s in per_seed[1:]):
        raise NoItemScores("its seeds were scored on different test items")
    return ids, np.array([[s[i] for i in ids] for s in per_seed], dtype=float)


def p_best(
    scores: Mapping[str, np.ndarray],
    higher_is_better: bool = True,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, float]:
    """P(best) of each configuration: the share of bootstrap resamples in which its mean is the
    best. `scores`: configuration -> array of seeds x items, the items in the same order for all.

    Each resample draws the test items with replacement once, shared by every configuration
    (paired: all were scored on the same items, so the item's difficulty cancels), and each
    configuration's seeds with replacement, independently (seeds are separate trainings). A
    configuration's mean is the mean over its drawn seeds of the mean over the drawn items; a
    tie for the best shares the resample equally, so identical configurations get equal shares.

    Written here rather than with scipy.stats.bootstrap, which returns intervals of one
    statistic: this needs the items drawn once for all configurations, the seeds drawn within
    each, and the arg-max of every resample."""
    if not scores:
        return {}
    names = sorted(scores)
    mats = [np.atleast_2d(np.asarray(scores[n], dtype=float)) for n in names]
    n_items = mats[0].shape[1]
    for name, m in zip(names, mats, strict=True):
        if m.ndim != 2 or m.shape[1] != n_items or m.shape[0] == 0 or n_items == 0:
            raise ValueError(
                f"{name}: scores of shape {m.shape}; every configuration needs seeds x "
                f"{n_items} items, at least one of each"
            )
        if not np.isfinite(m).all():
            raise ValueError(f"{name}: scores that are not finite numbers")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    sign = 1.0 if higher_is_better else -1.0
    stacked = np.concatenate(mats) * sign  # all seeds of all configurations, seeds x items
    bounds = np.cumsum([0] + [m.shape[0] for m in mats])
    rng = np.random.default_rng(seed)
    wins = np.zeros(len(names))
    chunk = max(1, min(resamples, 4_000_000 // n_items))  # item counts of at most ~32 MB
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        # Item counts instead of indices: one matrix product gives every seed's resampled mean.
        counts = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=size)
        seed_means = counts @ stacked.T / n_items  # resamples x all seeds
        means = np.empty((size, len(names)))
        for k, m in enumerate(mats):
            block = seed_means[:, bounds[k] : bounds[k + 1]]
            n_seeds = m.shape[0]
            if n_seeds == 1:
                means[:, k] = block[:, 0]
            else:
                weights = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=size)
                means[:, k] = (weights * block).sum(axis=1) / n_seeds
        top = means.max(axis=1, keepdims=True)
        # Equal up to rounding: sums of the same 0/1 scores in another order are still a tie.
        tied = means >= top - 1e-12 * np.maximum(1.0, np.abs(top))
        wins += (tied / tied.sum(axis=1, keepdims=True)).sum(axis=0)
        done += size
    return {name: float(w / resamples) for name, w in zip(names, wins, strict=True)}


def _z(p: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(p))


def minimum_detectable_difference(
    scores: np.ndarray, confidence: float = 0.95, power: float = POWER
) -> float:
    """The smallest true difference in the mean that a two-sided test at level 1 - confidence
    detects with the given power, between two configurations each scored once on these many
    test items at this score's level: (z(1 - alpha/2) + z(power)) x sqrt(2 var / n).

    `scores`: one configuration's per-item scores (items, or seeds x items). The variance is
    the per-item variance within a seed; for a 0/1 metric it is p(1 - p) at p = (k + 1)/(n + 2),
    so a perfect or null score on few items does not claim every difference is detectable.
    It ignores pairing (configurations that err on the same items are told apart more easily)
    and seed-to-seed variation (which makes them harder): it is the test set's share."""
    m = np.atleast_2d(np.asarray(scores, dtype=float))
    n = m.shape[1]
    if n == 0 or not np.isfinite(m).all():
        return math.nan
    if np.isin(m, (0.0, 1.0)).all():
        p = (m.mean() * n + 1) / (n + 2)
        variance = p * (1 - p)
    else:
        variance = float(m.var(axis=1).mean())
    if variance == 0:
        return math.nan  # every item scored the same: the data say nothing about the spread
    z = _z(1 - (1 - confidence) / 2) + _z(power)
    return z * math.sqrt(2 * variance / n)
