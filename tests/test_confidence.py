"""P(best) and the minimum detectable difference (reporting/confidence.py) on hand-checkable
cases: the hierarchical posterior of two configurations against its integral over tau, a clear
winner, identical configurations, a noisy winner shrunk and a clear one not, seed noise
learned from the seeds; the paired bootstrap it replaced against the exact multinomial sum; the
binomial closed form; hostile scores and samples files; and the recommendation that states it,
decided or not, from a results folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import tiny_experiment
from scipy import integrate, stats

from tunebench import layout
from tunebench.experiment import ExperimentError, validate_data
from tunebench.io import write_json, write_jsonl
from tunebench.matrix import expand
from tunebench.reporting import confidence, configurations, recommend
from tunebench.reporting.report import comparison_table

Z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # two-sided 5%, 80% power: 2.8016


def scores(correct: list[int], n: int) -> np.ndarray:
    """One seed's 0/1 scores on n items, 1 on the listed items."""
    row = np.zeros(n)
    row[correct] = 1
    return row[None, :]


def exact_p_best(n: int, a: int, b: int) -> float:
    """P(A best) under the paired bootstrap for one seed each, when A alone is right on a items
    and B alone on b (the rest agree): the draws of those items are multinomial, so P(A's
    draws > B's) + half of P(equal), summed over how many of the a + b items were drawn."""
    total = 0.0
    for m in range(n + 1):
        drawn = stats.binom.pmf(m, n, (a + b) / n)
        wins = stats.binom.sf(m // 2, m, a / (a + b))  # more than half of them A's
        ties = stats.binom.pmf(m // 2, m, a / (a + b)) if m % 2 == 0 else 0.0
        total += drawn * (wins + ties / 2)
    return total


def test_a_clear_winner_has_p_best_near_1_and_identical_ones_share_it():
    base = list(range(50))
    winner = scores(base + list(range(50, 70)), 200)  # right on 20 more items
    loser = scores(base, 200)
    p = confidence.p_best({"a": winner, "b": loser})
    # B only ties when none of the 20 items is drawn: (180/200)^200, about 7e-10.
    assert p["a"] == pytest.approx(1.0, abs=1e-6) and p["b"] == pytest.approx(0.0, abs=1e-6)
    # 20 items all in A's favour: 4.7 standard errors ahead, so B is not a contender.
    assert p == {"a": 1.0, "b": 0.0}
    same = confidence.p_best({"a": loser, "b": loser.copy(), "c": loser.copy()})
    assert same == {
        "a": pytest.approx(1 / 3, abs=0.015),
        "b": pytest.approx(1 / 3, abs=0.015),
        "c": pytest.approx(1 / 3, abs=0.015),
    }
    boot = confidence.bootstrap_p_best({"a": loser, "b": loser.copy(), "c": loser.copy()})
    assert boot == {"a": pytest.approx(1 / 3), "b": pytest.approx(1 / 3), "c": pytest.approx(1 / 3)}


def test_discordant_items_match_the_exact_multinomial_sum():
    n, a, b = 100, 6, 3
    common = list(range(40))
    first = scores(common + list(range(40, 40 + a)), n)
    second = scores(common + list(range(60, 60 + b)), n)
    p = confidence.bootstrap_p_best({"first": first, "second": second})
    expected = exact_p_best(n, a, b)  # 0.83
    assert 0.7 < expected < 0.95
    # Monte Carlo error of 10,000 resamples: sqrt(0.83 * 0.17 / 10_000) = 0.004.
    assert p["first"] == pytest.approx(expected, abs=0.015)
    assert p["first"] + p["second"] == pytest.approx(1.0)


def test_the_bootstrap_resamples_seeds_a_lucky_seed_is_not_a_sure_win():
    n = 400
    rng = np.random.default_rng(1)
    steady = (rng.random((1, n)) < 0.5).astype(float)
    # Seed 0 far better than the steady configuration, seed 1 far worse: drawing the seeds
    # with replacement gives (0, 0), (0, 1), (1, 1) with chances 1/4, 1/2, 1/4, and the means
    # 0.9, 0.6, 0.3 against 0.5: P(best) 0.75, where one seed would have said 1.
    lucky = np.stack([(rng.random(n) < 0.9), (rng.random(n) < 0.3)]).astype(float)
    p = confidence.bootstrap_p_best({"lucky": lucky, "steady": steady})
    assert p["lucky"] == pytest.approx(0.75, abs=0.03)
    assert confidence.bootstrap_p_best({"lucky": lucky[:1], "steady": steady})["lucky"] > 0.99
    # Two identical configurations with two seeds each: symmetric, about one half.
    twin = confidence.bootstrap_p_best({"a": lucky, "b": lucky.copy()})
    assert twin["a"] == pytest.approx(0.5, abs=0.03)
    # The hierarchical posterior learns the seed-to-seed spread from the same seeds: the lucky
    # configuration is far from a sure win, and with one seed each it would have been.
    assert 0.5 < confidence.p_best({"lucky": lucky, "steady": steady})["lucky"] < 0.9
    assert confidence.p_best({"lucky": lucky[:1], "steady": steady})["lucky"] == 1.0


def test_lower_is_better_deterministic_and_order_free():
    rng = np.random.default_rng(2)
    x, y = rng.normal(1.0, 1, (1, 50)), rng.normal(1.5, 1, (1, 50))
    high = confidence.p_best({"x": x, "y": y})
    low = confidence.p_best({"y": y, "x": x}, higher_is_better=False)
    # The same draws with the sign turned: equal up to Monte Carlo error (0.004).
    assert high["y"] > 0.7 and low["x"] == pytest.approx(high["y"], abs=0.015)
    assert confidence.p_best({"x": x, "y": y}) == high  # fixed seed: the same every time
    assert confidence.p_best({"x": x, "y": y}, seed=1) != high


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"a": np.ones((1, 3)), "b": np.ones((1, 4))}, "needs seeds x 3 items"),
        ({"a": np.ones((1, 0)), "b": np.ones((1, 0))}, "needs seeds x 0 items"),
        ({"a": np.ones((0, 3)), "b": np.ones((1, 3))}, "at least one of each"),
        ({"a": np.array([[1.0, math.nan]]), "b": np.ones((1, 2))}, "not finite"),
        ({"a": np.array([[1.0, math.inf]]), "b": np.ones((1, 2))}, "not finite"),
        ({"a": np.ones((1, 2, 2))}, "needs seeds x"),
    ],
)
def test_hostile_scores_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        confidence.p_best(bad)
    with pytest.raises(ValueError, match=match):
        confidence.bootstrap_p_best(bad)


def two_by_hand(first: np.ndarray, second: np.ndarray) -> float:
    """P(first best) of the hierarchical model for two configurations of one seed, by quadrature
    over tau: the difference d of the means has noise variance v (the paired per-item
    differences' variance over n) and prior N(0, 2 tau^2), so given tau it is normal with mean
    d 2tau^2 / (2tau^2 + v) and variance 2tau^2 v / (2tau^2 + v), and tau has the posterior
    N(d; 0, 2tau^2 + v) x its half-Cauchy prior on [0, top]."""
    n = first.shape[1]
    d = first.mean() - second.mean()
    v = np.var(first[0] - second[0], ddof=1) / n
    item_sd = math.sqrt((np.var(first, ddof=1) + np.var(second, ddof=1)) / 2)
    top = max(item_sd, 3 * abs(d) / 2)
    scale = confidence.TAU_SCALE * top

    def weight(tau):
        return stats.norm.pdf(d, 0, math.sqrt(2 * tau**2 + v)) / (1 + (tau / scale) ** 2)

    def p_given(tau):
        total = 2 * tau**2 + v
        return stats.norm.cdf(d * 2 * tau**2 / total / math.sqrt(2 * tau**2 * v / total))

    points = [scale * k for k in (0.1, 1, 10)]
    num = integrate.quad(lambda t: weight(t) * p_given(t), 0, top, points=points)[0]
    return num / integrate.quad(weight, 0, top, points=points)[0]


def test_two_configurations_match_the_integral_over_tau():
    n = 100
    common = list(range(40))
    first = scores(common + list(range(40, 46)), n)  # right alone on 6 items
    second = scores(common + [60, 61, 62], n)  # right alone on 3
    expected = two_by_hand(first, second)
    assert 0.55 < expected < exact_p_best(n, 6, 3)  # shrunk below the bootstrap's 0.83
    p = confidence.p_best({"first": first, "second": second})
    # Monte Carlo error of 10,000 draws 0.005; the grid of 48 points for tau about as much.
    assert p["first"] == pytest.approx(expected, abs=0.015)
    assert p["first"] + p["second"] == pytest.approx(1.0)


def test_a_noisy_one_seed_winner_is_shrunk_and_a_clear_one_is_not():
    n = 200
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0, 1.5, n)

    def run(ability):
        return (rng.random((1, n)) < 1 / (1 + np.exp(difficulty - ability))).astype(float)

    # Four configurations of the same true ability: whichever leads, leads by luck.
    noisy = {f"c{k}": run(0.0) for k in range(4)}
    observed = {k: float(v.mean()) for k, v in noisy.items()}
    leader = max(observed, key=observed.get)
    post = confidence.posterior(noisy).means()
    others = np.mean([v for k, v in observed.items() if k != leader])
    assert others < post[leader] < observed[leader]  # pulled back toward the others

    def shrunk(scores, name):
        """The share of its lead over the others' mean that the posterior takes back."""
        mean = float(scores[name].mean())
        rest = np.mean([v.mean() for k, v in scores.items() if k != name])
        return (mean - confidence.posterior(scores).means()[name]) / (mean - rest)

    assert shrunk(noisy, leader) > 0.4
    hierarchical = confidence.p_best(noisy)[leader]
    assert hierarchical < confidence.bootstrap_p_best(noisy)[leader] - 0.1
    # One logit better, still a contender: most of its lead stays, and so does its P(best).
    better = {**noisy, "c3": run(1.0)}
    assert len(confidence.posterior(better).names) > 1
    assert shrunk(better, "c3") < 0.25 and confidence.p_best(better)["c3"] > 0.9
    # 1.5 logits better: next to nothing taken back.
    clear = {**noisy, "c3": run(1.5)}
    assert shrunk(clear, "c3") < 0.1 and confidence.p_best(clear)["c3"] > 0.99


def test_hostile_but_valid_scores_give_shares_that_sum_to_one():
    # Every score the same everywhere: an exact tie, nothing to learn.
    assert confidence.p_best({"a": np.ones((2, 3)), "b": np.ones((1, 3))}) == {"a": 0.5, "b": 0.5}
    # A constant continuous score per configuration: no item noise, the higher one is best.
    exact = confidence.p_best({"a": np.full((1, 4), 0.7), "b": np.full((1, 4), 0.3)})
    assert exact == {"a": 1.0, "b": 0.0}
    # One item; more runs than items; huge values: finite shares that sum to 1.
    rng = np.random.default_rng(4)
    for case in (
        {"a": np.ones((1, 1)), "b": np.zeros((1, 1))},
        {"a": rng.random((6, 3)), "b": rng.random((6, 3)), "c": rng.random((1, 3))},
        {"a": rng.normal(0, 1e12, (2, 50)), "b": rng.normal(0, 1e12, (1, 50))},
    ):
        p = confidence.p_best(case)
        assert all(0 <= v <= 1 for v in p.values()) and sum(p.values()) == pytest.approx(1.0)


def test_no_configurations_and_one_configuration():
    assert confidence.describe(40, seeds=False).startswith(f"{confidence.RESAMPLES:,} draws")
    assert "40 test items and of each configuration's seeds" in confidence.describe(40, True)
    assert confidence.p_best({}) == {}
    assert confidence.p_best({"only": np.zeros((2, 5))}) == {"only": 1.0}
    with pytest.raises(ValueError, match="resamples"):
        confidence.p_best({"only": np.zeros((1, 5))}, resamples=0)


def test_the_minimum_detectable_difference_is_the_binomial_closed_form():
    # 95 of 100 right: p = (95 + 1) / (100 + 2); (z(0.975) + z(0.8)) sqrt(2 p (1 - p) / n).
    hundred = scores(list(range(95)), 100)
    p = 96 / 102
    expected = Z * math.sqrt(2 * p * (1 - p) / 100)
    assert confidence.minimum_detectable_difference(hundred) == pytest.approx(expected)
    # 100 prompts cannot separate 0.95 from 0.96; 10,000 can (the plain p = 0.95 form: 0.0086).
    assert expected > 0.08
    many = scores(list(range(9500)), 10_000)
    plain = Z * math.sqrt(2 * 0.95 * 0.05 / 10_000)
    assert confidence.minimum_detectable_difference(many) == pytest.approx(plain, rel=0.01)
    assert plain < 0.01
    # Where 0.95 and 0.96 become separable (docs/report.md): about 7,500 items.
    near = [scores(list(range(n * 95 // 100)), n) for n in (7000, 8000)]
    assert [confidence.minimum_detectable_difference(s) < 0.01 for s in near] == [False, True]
    # A perfect score on 20 items does not claim every difference is detectable.
    assert 0.05 < confidence.minimum_detectable_difference(np.ones((1, 20))) < 0.3
    # A continuous score uses its own variance; seeds average their variances.
    values = np.array([[0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.5, 0.7]])
    assert confidence.minimum_detectable_difference(values) == pytest.approx(
        Z * math.sqrt(2 * 0.05 / 4)
    )
    assert math.isnan(confidence.minimum_detectable_difference(np.full((1, 5), 0.3)))
    assert math.isnan(confidence.minimum_detectable_difference(np.zeros((1, 0))))
    at_90 = confidence.minimum_detectable_difference(hundred, confidence=0.9)
    assert at_90 < expected


# ------------------------------------------------------------ samples files and the report


def sample(i, em: bool, **extra) -> dict:
    return {"id": i, "prompt": f"q{i}", "reference": "a", "exact_match": em, **extra}


def write_run(root, run_id, rows, result=None, train_status="ok"):
    write_json(root / layout.TRAIN_RESULT.format(run_id=run_id), {"status": train_status})
    mean = sum(r["exact_match"] for r in rows) / max(len(rows), 1)
    write_json(
        root / layout.EVAL_RESULT.format(run_id=run_id),
        result or {"status": "ok", "exact_match": mean, "examples": len(rows)},
    )
    write_jsonl(root / layout.EVAL_SAMPLES.format(run_id=run_id), rows)


def test_per_item_scores_are_read_and_checked_against_the_result(tmp_path):
    rows = [sample(i, i % 2 == 0) for i in range(10)]
    write_run(tmp_path, "r", rows)
    got = confidence.run_item_scores(tmp_path, "r", "exact_match")
    assert got == {i: float(i % 2 == 0) for i in range(10)}
    rows = [
        sample(i, True, chosen_logprob=-1.0, rejected_logprob=-1.5 - i, prefers_chosen=True)
        for i in range(3)
    ]
    write_run(tmp_path, "p", rows, {"status": "ok", "preference_margin": 1.5, "examples": 3})
    assert confidence.run_item_scores(tmp_path, "p", "preference_margin") == {
        0: 0.5,
        1: 1.5,
        2: 2.5,
    }
    rows = [sample(i, True, answer_index=1, picked_index=i % 2) for i in range(4)]
    write_run(tmp_path, "c", rows, {"status": "ok", "examples": 4})
    assert list(confidence.run_item_scores(tmp_path, "c", "multiple_choice_accuracy").values()) == [
        0.0,
        1.0,
        0.0,
        1.0,
    ]


@pytest.mark.parametrize(
    "rows, result, match",
    [
        (None, None, "no samples.jsonl"),
        ("{not json\n", None, "unreadable samples"),
        ([], None, "no test items"),
        ([sample(1, True), sample(1, False)], None, "scored twice"),
        ([{"prompt": "q", "exact_match": True}], None, "without an id"),
        ([{"id": [1], "exact_match": True}], None, "without an id"),
        ([{"id": 1, "prompt": "q"}], None, "has no 'exact_match'"),
        ([{"id": 1, "exact_match": None}], None, "exact_match None"),
        ([sample(1, True), sample(2, True)], {"status": "ok", "exact_match": 0.5}, "not the"),
        ([sample(1, True)], {"status": "ok", "examples": 2}, "1 samples but 2 test examples"),
    ],
)
def test_hostile_samples_files_are_refused_with_the_reason(tmp_path, rows, result, match):
    write_json(tmp_path / layout.EVAL_RESULT.format(run_id="r"), result or {"status": "ok"})
    path = tmp_path / layout.EVAL_SAMPLES.format(run_id="r")
    if isinstance(rows, str):
        path.write_text(rows)
    elif rows is not None:
        write_jsonl(path, rows)
    with pytest.raises(confidence.NoItemScores, match=match):
        confidence.run_item_scores(tmp_path, "r", "exact_match")


def test_corpus_metrics_and_nan_scores_are_refused(tmp_path):
    write_run(tmp_path, "r", [sample(1, True)])
    with pytest.raises(confidence.NoItemScores, match="bleu is not scored per test item"):
        confidence.run_item_scores(tmp_path, "r", "bleu")
    path = tmp_path / layout.EVAL_SAMPLES.format(run_id="r")
    path.write_text(json.dumps({"id": 1, "rouge_l": float("nan")}) + "\n")
    with pytest.raises(confidence.NoItemScores, match="not a finite number"):
        confidence.run_item_scores(tmp_path, "r", "rouge_l")


def test_a_configuration_keeps_its_finished_seeds_on_the_same_items(tmp_path):
    write_run(tmp_path, "s0", [sample(i, True) for i in range(4)])
    write_run(tmp_path, "s1", [sample(i, False) for i in range(4)], train_status="oom")
    write_run(tmp_path, "s2", [sample(i, i < 2) for i in (3, 2, 1, 0)])  # another order
    ids, values = confidence.configuration_scores(
        tmp_path, ["s0", "s1", "s2", "gone"], "exact_match"
    )
    assert ids == (0, 1, 2, 3)
    assert values.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    write_run(tmp_path, "s3", [sample(i, True) for i in range(1, 5)])
    with pytest.raises(confidence.NoItemScores, match="different test items"):
        confidence.configuration_scores(tmp_path, ["s0", "s3"], "exact_match")
    with pytest.raises(confidence.NoItemScores, match="no finished run"):
        confidence.configuration_scores(tmp_path, ["s1", "gone"], "exact_match")


def results_folder(root, exp, right: dict, n: int = 40) -> None:
    """Result files of every run of `exp`: a run of method M is right on the items right[M]
    gives for its seed (a function of the seed)."""
    for run in expand(exp):
        rows = [sample(i, i in right[run.method](run.seed)) for i in range(n)]
        write_json(
            root / layout.TRAIN_RESULT.format(run_id=run.run_id),
            {
                "run_id": run.run_id,
                "status": "ok",
                "accelerator_hours": 0.01,
                "prediction": {"predicted_peak_gb": 1.0},
                "provenance": {"hardware": {"accelerator": "cpu"}},
            },
        )
        mean = sum(r["exact_match"] for r in rows) / n
        write_json(
            root / layout.EVAL_RESULT.format(run_id=run.run_id),
            {"run_id": run.run_id, "status": "ok", "exact_match": mean, "examples": n},
        )
        write_jsonl(root / layout.EVAL_SAMPLES.format(run_id=run.run_id), rows)


def advice(root, exp):
    table = comparison_table(exp, root)
    configs = configurations.configurations(table, exp.report.confidence)
    answers = recommend.recommend(configs, exp, root)
    return answers, recommend.markdown(answers, exp)


def test_the_recommendation_states_p_best_and_decides(tmp_path):
    exp = validate_data(tiny_experiment())
    # Full fine-tuning right on 30 of 40 items, LoRA on 10 of them: decided.
    results_folder(tmp_path, exp, {"full": lambda s: range(30), "lora": lambda s: range(10)})
    (answer,), text = advice(tmp_path, exp)
    assert answer.best.configuration == "m full" and answer.decided
    assert answer.best.p_best == pytest.approx(1.0) and answer.test_items == 40
    assert answer.runner_up.p_best == pytest.approx(0.0)
    assert "- Decided: m full has P(best) 1 >= 0.9" in text
    assert "One seed each" in text and "(1 seed: no interval), P(best) 1;" in text
    p = 31 / 42
    mdd = Z * math.sqrt(2 * p * (1 - p) / 40)
    assert f"Minimum detectable difference with 40 test items: {mdd:.3f}" in text


def test_close_configurations_are_not_decided_and_the_threshold_is_the_experiments(tmp_path):
    exp = validate_data(
        tiny_experiment(training={**tiny_experiment()["training"], "seeds": [0, 1]})
    )
    # Two seeds each; full right on 21 and 20 items, LoRA on 20 and 21: a coin toss.
    right = {
        "full": lambda s: range(21 - s),
        "lora": lambda s: range(5, 25 + s),
    }
    results_folder(tmp_path, exp, right)
    (answer,), text = advice(tmp_path, exp)
    assert answer.decided is False and answer.seeds_resampled
    assert 0.3 < answer.best.p_best < 0.7
    assert "- **Not decided**: no configuration reaches P(best) 0.9" in text
    assert "and of each configuration's seeds" in text and "One seed each" not in text


def test_the_threshold_is_the_experiments(tmp_path):
    # The discordant case above, through the results folder: P(best) about 0.7 (the integral
    # over tau) is not decided at the default 0.9, and is at report.p_best_threshold 0.65.
    right = {
        "full": lambda s: [*range(40), *range(40, 46)],
        "lora": lambda s: [*range(40), 60, 61, 62],
    }
    strict = validate_data(tiny_experiment())
    results_folder(tmp_path, strict, right, n=100)
    (answer,), text = advice(tmp_path, strict)
    by_hand = two_by_hand(scores(right["full"](0), 100), scores(right["lora"](0), 100))
    assert answer.best.p_best == pytest.approx(by_hand, abs=0.015)
    assert answer.decided is False and "**Not decided**" in text
    lenient = validate_data(tiny_experiment(report={"p_best_threshold": 0.65}))
    (answer,), text = advice(tmp_path, lenient)
    assert answer.decided is True and "- Decided: m full has P(best) 0.7" in text


def test_without_per_item_scores_it_says_why_and_without_a_folder_nothing(tmp_path):
    exp = validate_data(tiny_experiment())
    results_folder(tmp_path, exp, {"full": lambda s: range(30), "lora": lambda s: range(10)})
    lora = next(r.run_id for r in expand(exp) if r.method == "lora")
    (tmp_path / layout.EVAL_SAMPLES.format(run_id=lora)).unlink()
    (answer,), text = advice(tmp_path, exp)
    assert answer.decided is None and math.isnan(answer.best.p_best)
    assert "- P(best): not computed: m lora r4: " in text and "no samples.jsonl" in text
    table = comparison_table(exp, tmp_path)
    configs = configurations.configurations(table, exp.report.confidence)
    (plain,) = recommend.recommend(configs, exp)
    assert "P(best)" not in recommend.markdown([plain], exp)
    with pytest.raises(ExperimentError, match="p_best_threshold"):
        validate_data(tiny_experiment(report={"p_best_threshold": 0.4}))
