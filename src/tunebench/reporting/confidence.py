"""How sure the recommendation is: P(best) of each configuration, the posterior probability that
its true mean is the best under a hierarchical normal model of the paired per-item test scores
(and of each configuration's seeds), and the minimum difference a test set of its size can
detect.

The per-item scores are the evaluation step's samples file (layout.EVAL_SAMPLES): one row per
test item, keyed by the item's id, so every configuration is compared on the same items (the
pairing). Only metrics scored per item can be used: bleu and chrf are corpus scores, losses
are token-weighted over the whole split, and lm-eval tasks keep their own samples.

The paired bootstrap that P(best) was first (bootstrap_p_best) stays as the baseline of
benchmarks/p_best_calibration.py, which measures both against synthetic ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunebench import layout
from tunebench.io import read_json, read_jsonl

# Posterior draws; the Monte Carlo error of a P(best) near 0.9: sqrt(0.9 * 0.1 / 10_000) = 0.003.
RESAMPLES = 10_000
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


def _checked(scores: Mapping[str, np.ndarray], resamples: int) -> tuple[list, list]:
    """Configuration names (sorted) and their seeds x items arrays, refused unless every one
    holds finite scores on the same items."""
    names = sorted(scores)
    mats = [np.atleast_2d(np.asarray(scores[n], dtype=float)) for n in names]
    n_items = mats[0].shape[1] if mats[0].ndim == 2 else 0
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
    return names, mats


def bootstrap_p_best(
    scores: Mapping[str, np.ndarray],
    higher_is_better: bool = True,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, float]:
    """P(best) as the share of paired bootstrap resamples in which a configuration has the
    best mean: the items drawn with replacement once for all configurations, each
    configuration's seeds with replacement, a tie shared. Kept as the baseline of
    benchmarks/p_best_calibration.py: it centres on the observed winner, whose lead is partly
    luck, so it is overconfident when the configurations are close (p_best corrects that).

    Written here rather than with scipy.stats.bootstrap, which returns intervals of one
    statistic: this needs the items drawn once for all configurations, the seeds drawn within
    each, and the arg-max of every resample."""
    if not scores:
        return {}
    names, mats = _checked(scores, resamples)
    n_items = mats[0].shape[1]
    sign = 1.0 if higher_is_better else -1.0
    stacked = np.concatenate(mats) * sign  # all seeds of all configurations, seeds x items
    bounds = np.cumsum([0] + [m.shape[0] for m in mats])
    rng = np.random.default_rng(seed)
    wins = np.zeros(len(names))
    chunk = max(1, min(resamples, 4_000_000 // (n_items * len(stacked))))  # at most ~32 MB
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        drawn = rng.integers(0, n_items, (size, n_items))  # the items of each resample
        seed_means = stacked[:, drawn].mean(axis=2).T  # resamples x all seeds
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


@dataclass(frozen=True)
class Posterior:
    """The hierarchical model's posterior over the configurations' true means, a mixture over
    a grid of (tau, seed sd): `weight` of each grid point, and the normal posterior of the
    means at it (`mean`: grid x configurations, `chol`: its covariance's Cholesky factor).
    Means are in the metric's units times `sign` (+1: higher is better)."""

    names: list
    sign: float
    tau: np.ndarray
    seed_sd: np.ndarray
    weight: np.ndarray
    mean: np.ndarray
    chol: np.ndarray
    observed: dict  # the configurations that are not contenders: their observed means

    def means(self) -> dict[str, float]:
        """Each configuration's posterior mean in the metric's units: its observed mean pulled
        toward the others' as far as its noise and the spread of the configurations say."""
        mixed = self.weight @ self.mean * self.sign
        return {**self.observed, **dict(zip(self.names, map(float, mixed), strict=True))}


# The half-Cauchy prior of tau, the spread of the configurations' true means, has this scale
# times the per-item sd (0.025 in accuracy at p = 0.5: configurations a few points apart).
# Chosen on the scenarios of benchmarks/p_best_calibration.py against 0.1, 0.2 and a uniform
# prior: those left eight close configurations or a small test set more overconfident; this
# one is a little underconfident with separated configurations instead.
TAU_SCALE = 0.05
FAR = 4.0  # standard errors behind the leader beyond which a configuration is not a contender


def _grid(top: float, points: int, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points in (0, top] denser near 0 (the spread is often small against its bound), and each
    one's share of the prior: uniform on [0, top], or half-Cauchy of `scale` times top."""
    edges = top * np.linspace(0.0, 1.0, points + 1) ** 2
    mid = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    if scale is not None:
        width = width / (1 + (mid / (scale * top)) ** 2)
    return mid, width / width.sum()


def _noise(runs: np.ndarray) -> np.ndarray:
    """Covariance of the runs' mean scores from the test items' noise: the sample covariance
    of their per-item scores over n (the pairing)."""
    n_runs, n_items = runs.shape
    noise = np.atleast_2d(np.cov(runs)) / n_items if n_items > 1 else np.zeros((n_runs, n_runs))
    if np.isin(runs, (0.0, 1.0)).all():
        # A right-or-wrong score: at least the variance at (k + 1) / (n + 2), so a perfect or
        # null run on few items is not taken as exact (as minimum_detectable_difference does).
        p = (runs.sum(axis=1) + 1) / (n_items + 2)
        noise[np.diag_indices(n_runs)] = np.maximum(np.diag(noise), p * (1 - p) / n_items)
    return noise


def contenders(mats: list[np.ndarray], noise: np.ndarray) -> np.ndarray:
    """Which configurations could be the best: all but those more than FAR standard errors of
    their difference below the observed leader (seed-to-seed spread included). One far worse
    configuration (a diverged learning rate) would otherwise widen the model's spread of true
    means and leave a close lead among the others unshrunk."""
    bounds = np.cumsum([0] + [m.shape[0] for m in mats])
    means, variances = [], []
    for k, m in enumerate(mats):
        block = noise[bounds[k] : bounds[k + 1], bounds[k] : bounds[k + 1]]
        seeds = m.shape[0]
        means.append(m.mean())
        extra = m.mean(axis=1).var(ddof=1) / seeds if seeds > 1 else 0.0
        variances.append(block.mean() + extra)
    lead = int(np.argmax(means))
    keep = np.ones(len(mats), dtype=bool)
    lead_rows = slice(bounds[lead], bounds[lead + 1])
    for k in range(len(mats)):
        if k == lead:
            continue
        cross = noise[lead_rows, bounds[k] : bounds[k + 1]].mean()
        sd = math.sqrt(max(variances[lead] + variances[k] - 2 * cross, 0.0))
        keep[k] = means[lead] - means[k] <= FAR * sd
    return keep


def posterior(scores: Mapping[str, np.ndarray], higher_is_better: bool = True) -> Posterior:
    """The posterior of the contending configurations' true means under a hierarchical normal
    model of the paired per-item scores (Gelman et al., Bayesian Data Analysis, 3rd ed.,
    section 5.4); the others (see `contenders`) keep their observed means in `observed`.

    Run r (a seed of configuration c) has mean score m_r = theta_c + e_r + u_r over the test
    items: theta_c the configuration's true mean (over the item population and over reruns),
    e_r ~ N(0, seed_sd^2) the rerun's luck, u the test items' noise, normal with the sample
    covariance of the runs' per-item scores over n (the pairing: every run was scored on the
    same items, so u is correlated across runs). The true means come from N(mu, tau^2): tau,
    how far apart configurations are, is learned from the observed spread, so a winner that
    leads by less than the noise explains is pulled back toward the others (the winner's
    curse) and a clear one is not. mu has a flat prior; tau a half-Cauchy prior of scale a
    twentieth of the per-item sd (Gelman 2006's weakly informative family; the scale
    chosen by benchmarks/p_best_calibration.py), seed_sd a uniform one up to the per-item sd, both
    integrated on a grid: given them the means are conjugate, so a grid over two scalars gives
    the posterior exactly and deterministically where a sampler (PyMC, emcee) would add a
    dependency and its own noise. Where no configuration has two seeds, seed_sd is not
    identified and is 0: the truth is then the trained runs' own means, not a rerun's."""
    all_names, all_mats = _checked(scores, 1)
    sign = 1.0 if higher_is_better else -1.0
    all_mats = [m * sign for m in all_mats]
    keep = contenders(all_mats, _noise(np.concatenate(all_mats)))
    names = [n for n, k in zip(all_names, keep, strict=True) if k]
    mats = [m for m, k in zip(all_mats, keep, strict=True) if k]
    observed = {
        n: float(m.mean()) * sign
        for n, m, k in zip(all_names, all_mats, keep, strict=True)
        if not k
    }
    runs = np.concatenate(mats)  # runs x items
    if len(names) == 1:  # the only contender: nothing to shrink toward
        return Posterior(
            names,
            sign,
            np.zeros(1),
            np.zeros(1),
            np.ones(1),
            np.full((1, 1), runs.mean()),
            np.zeros((1, 1, 1)),
            observed,
        )
    n_runs, n_items = runs.shape
    member = np.repeat(np.eye(len(names)), [m.shape[0] for m in mats], axis=0)  # runs x configs
    m = runs.mean(axis=1)
    noise = _noise(runs)
    config_means = member.T @ m / member.sum(axis=0)
    spread = float(config_means.std())
    item_sd = math.sqrt(max(float(np.diag(noise).mean()) * n_items, 0.0))
    within = [float(mat.mean(axis=1).std()) for mat in mats if mat.shape[0] > 1]
    # A tiny ridge keeps the covariances invertible (runs that agree on every item).
    unit = max(item_sd, spread, max(within, default=0.0), 1e-12 * float(np.abs(runs).max()), 1e-150)
    noise = noise + np.eye(n_runs) * (1e-6 * unit) ** 2
    tau, tau_prior = _grid(max(item_sd, 3 * spread) or unit, 48, TAU_SCALE)
    if within:
        seed_sd, seed_prior = _grid(max(item_sd, 3 * max(within)) or unit, 24)
    else:
        seed_sd, seed_prior = np.zeros(1), np.ones(1)
    t2_all = np.repeat(tau**2, len(seed_sd))
    s2_all = np.tile(seed_sd**2, len(tau))
    k = len(names)
    log_weight, mean, chol = [], [], []
    step = max(1, 2_000_000 // n_runs**2)  # grid points at a time: arrays of at most ~16 MB
    for start in range(0, len(t2_all), step):
        t2 = t2_all[start : start + step, None, None]
        s2 = s2_all[start : start + step, None, None]
        given = noise + s2 * np.eye(n_runs)  # the run means' covariance given the true means
        # Marginal likelihood of the run means with mu integrated out (flat prior): the
        # restricted likelihood, -0.5 (log|V| + log 1'V^-1 1 + the residual's quadratic form).
        total = given + t2 * (member @ member.T)
        inv = np.linalg.inv(total)
        a = inv.sum(axis=(1, 2))
        b = inv @ m
        quad = b @ m - b.sum(axis=1) ** 2 / a
        log_weight.append(-0.5 * (np.linalg.slogdet(total)[1] + np.log(a) + quad))
        # The true means given tau and seed_sd: the runs' precision plus the prior's, which
        # only constrains contrasts (mu is flat): (I - J/K) / tau^2.
        w = np.linalg.inv(given)
        cov = np.linalg.inv(member.T @ w @ member + (np.eye(k) - 1.0 / k) / t2)
        cov = (cov + np.swapaxes(cov, 1, 2)) / 2
        mean.append((cov @ (member.T @ (w @ m)[..., None]))[..., 0])
        chol.append(np.linalg.cholesky(cov))
    log_weight = np.concatenate(log_weight) + np.log(np.outer(tau_prior, seed_prior).ravel())
    weight = np.exp(log_weight - log_weight.max())
    weight /= weight.sum()
    return Posterior(
        names=names,
        sign=sign,
        tau=np.sqrt(t2_all),
        seed_sd=np.sqrt(s2_all),
        weight=weight,
        mean=np.concatenate(mean),
        chol=np.concatenate(chol),
        observed=observed,
    )


def p_best(
    scores: Mapping[str, np.ndarray],
    higher_is_better: bool = True,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, float]:
    """P(best) of each configuration: the posterior probability that its true mean is the best
    under the hierarchical model of `posterior`, from `resamples` draws of the true means.
    `scores`: configuration -> array of seeds x items, the items in the same order for all.

    A configuration more than FAR standard errors behind the observed leader is not a
    contender (see `contenders`) and gets 0. The paired bootstrap this replaces
    (bootstrap_p_best) centres on the observed winner and is overconfident when the
    configurations are close (benchmarks/p_best_calibration.py measures both). Every score the
    same everywhere: the data cannot tell the configurations apart, and each gets an equal
    share exactly."""
    if not scores:
        return {}
    names, mats = _checked(scores, resamples)
    if len(names) == 1:
        return {names[0]: 1.0}
    runs = np.concatenate(mats)
    if (runs == runs.flat[0]).all():
        return {name: 1 / len(names) for name in names}
    post = posterior(scores, higher_is_better)
    if len(post.names) == 1:
        return {name: float(name == post.names[0]) for name in names}
    rng = np.random.default_rng(seed)
    point = rng.choice(len(post.weight), size=resamples, p=post.weight)
    z = rng.standard_normal((resamples, len(post.names)))
    draws = post.mean[point] + np.einsum("nij,nj->ni", post.chol[point], z)
    wins = np.bincount(draws.argmax(axis=1), minlength=len(post.names)) / resamples
    got = dict(zip(post.names, map(float, wins), strict=True))
    return {name: got.get(name, 0.0) for name in names}


def describe(test_items: int, seeds: bool) -> str:
    """What a P(best) is the share of, for the recommendation's sentence."""
    also = " and of each configuration's seeds" if seeds else ""
    return (
        f"{RESAMPLES:,} draws from the posterior of a hierarchical model of the paired scores "
        f"on the {test_items} test items{also} (the observed leader's luck shrunk)"
    )


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
