"""Adaptive seeds (training.seeds: {adaptive: ...}, docs/search.md): seeds added only to the
configurations still in contention with the best.

Every configuration (a run's settings without its seed) trains the rule's `first` seeds. After
each round a decision (`decide`, pure) reads P(best) of every configuration of a dataset
(reporting/confidence.py, on the report's metric, per test item) and adds seed n (the run that
`seeds: [0, .., n]` would train: the same run id) to each configuration in contention, until the
leader's P(best) reaches target_p_best, max_runs is spent, or no contender has fewer than `max`.

In contention: P(best) at least min_p_best while the leader is below target. Not an overlap of
intervals: with two seeds a t interval has one degree of freedom and overlaps nearly everything,
and with one there is none; P(best) already weighs the paired items and the seeds.

P(best) is computed on test items. A decision adds evidence where the ranking is uncertain; it
never picks the winner (the recommendation does, over every seed each configuration got). The
decisions are files (layout.SEEDS_ROUND) written by a Snakemake checkpoint per round, a pure
function of the results on disk, so a killed workflow resumes and a rerun decides the same.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from tunebench import layout
from tunebench.matrix import RunConfig, expand
from tunebench.spec import LOWER_IS_BETTER, AdaptiveSeedRule, Experiment

ADD, STOP = "add", "stop"


@dataclass(frozen=True)
class Verdict:
    """One configuration after a round: its seeds, its P(best) (None: not ranked), whether it
    gets a seed in the next round, and why (`kind` plus the numbers `reason` words)."""

    seeds: int
    p_best: float | None
    decision: str  # ADD or STOP
    kind: str  # contention, leads, decided, behind, out, max, budget, unranked
    leader: str | None
    leader_p_best: float | None
    round: int
    why_unranked: str = ""


def reason(v: Verdict | Mapping, name: Callable[[str], str] = str) -> str:
    """A verdict in words; `name` turns a configuration key into the report's name."""
    v = v if isinstance(v, Mapping) else asdict(v)
    p, top, r = v["p_best"], v["leader_p_best"], v["round"]
    leader = name(v["leader"]) if v["leader"] else ""
    kind = v["kind"]
    if kind == "unranked":
        return f"not ranked after round {r}: {v['why_unranked']}"
    if kind == "contention":
        return f"still in contention with {leader} at round {r} (P(best) {p:.2f} against {top:.2f})"
    if kind == "leads":
        return f"leads at round {r} with P(best) {p:.2f}, below the target"
    if kind == "decided":
        return f"P(best) {p:.2f} reached the target after round {r}"
    if kind == "behind":
        return f"P(best) {p:.2f} after round {r}: {leader} reached the target ({top:.2f})"
    if kind == "out":
        return f"P(best) {p:.2f} after round {r}: out of contention"
    if kind == "max":
        against = f" against {leader}'s {top:.2f}" if leader else ""
        return f"max seeds reached at round {r}, P(best) {p:.2f}{against}"
    return f"max_runs spent at round {r}, P(best) {p:.2f}"


def decide(
    groups: Mapping[str, Mapping[str, float | None]],
    seeds: Mapping[str, int],
    rule: AdaptiveSeedRule,
    round: int,
    unranked: Mapping[str, str] | None = None,
) -> dict[str, Verdict]:
    """Configuration key -> its verdict after `round`. `groups`: the configurations that compete
    (one dataset's) -> key -> P(best), None where it could not be computed (`unranked` says
    why); `seeds`: each one's seeds so far. Within a group: once the leader reaches
    target_p_best nobody gets a seed; otherwise each one with P(best) >= min_p_best and fewer
    than `max` seeds gets one. max_runs (over every group) keeps the highest P(best) first,
    ties by key, so the order results arrive in never matters."""
    unranked = unranked or {}
    out: dict[str, Verdict] = {}
    for group in groups.values():
        ranked = {k: p for k, p in group.items() if p is not None}
        leader = min(ranked, key=lambda k: (-ranked[k], k)) if ranked else None
        top = ranked[leader] if leader else None
        for key, p in group.items():
            n = seeds[key]
            if p is None:
                kind = "unranked"
            elif top >= rule.target_p_best:
                kind = "decided" if key == leader else "behind"
            elif p < rule.min_p_best:
                kind = "out"
            elif n >= rule.max:
                kind = "max"
            else:
                kind = "leads" if key == leader else "contention"
            add = kind in ("leads", "contention")
            shown = None if key == leader and kind in ("leads", "max") else leader
            out[key] = Verdict(
                n,
                p,
                ADD if add else STOP,
                kind,
                shown,
                top if shown else None,
                round,
                unranked.get(key, ""),
            )
    if rule.max_runs is not None:
        room = rule.max_runs - sum(seeds[k] for k in out)
        adding = sorted(
            (k for k, v in out.items() if v.decision == ADD), key=lambda k: (-out[k].p_best, k)
        )
        for key in adding[max(room, 0) :]:
            v = out[key]
            out[key] = Verdict(v.seeds, v.p_best, STOP, "budget", v.leader, v.leader_p_best, round)
    return out


# ---------------------------------------------------------------- the runs and the files


def every_seed(exp: Experiment) -> list[RunConfig]:
    """Every run the rule may train: each configuration at seeds 0 to max-1 (the runs a list of
    those seeds would expand to, ids included)."""
    rule = exp.training.adaptive
    training = exp.training.model_copy(update={"seeds": list(range(rule.max))})
    return expand(exp.model_copy(update={"training": training}))


def configurations(exp: Experiment) -> dict[str, list[RunConfig]]:
    """Key (the seed-0 run's id) -> the configuration's runs for seeds 0 to max-1, seed order."""
    from tunebench.search.halving import configurations as grouped

    return grouped(every_seed(exp))


def round_path(root, round: int) -> Path:
    return Path(root) / layout.SEEDS_ROUND.format(round=round)


def rounds(root) -> list[dict]:
    """The decisions on disk, round 0 first (up to the first one missing)."""
    from tunebench.io import read_json

    out = []
    while round_path(root, len(out)).is_file():
        out.append(read_json(round_path(root, len(out))))
    return out


def seeds_at(exp: Experiment, decisions: list[dict]) -> dict[str, int]:
    """Each configuration's seeds after `decisions`: the first round's plus one per ADD."""
    counts = dict.fromkeys(configurations(exp), exp.training.adaptive.first)
    for decision in decisions:
        for entry in decision["configurations"]:
            if entry["decision"] == ADD and entry["configuration"] in counts:
                counts[entry["configuration"]] += 1
    return counts


def metric_of(exp: Experiment, dataset) -> str:
    """The metric P(best) is computed on: report.metric, else the dataset's first."""
    return exp.report.metric or dataset.evaluation.metrics[0]


def decide_on_disk(exp: Experiment, round: int, root) -> dict:
    """The decision after `round` from the evaluations on disk, as the workflow writes it to
    layout.SEEDS_ROUND: each configuration's seeds, P(best), decision and reason, and the runs
    the next round trains (`added_runs`; none: the last round)."""
    from tunebench.io import read_json
    from tunebench.reporting import confidence

    rule = exp.training.adaptive
    before = [read_json(round_path(root, k)) for k in range(round)]
    counts = seeds_at(exp, before)
    configs = configurations(exp)
    groups: dict[str, dict[str, float | None]] = defaultdict(dict)
    unranked: dict[str, str] = {}
    for dataset in exp.datasets:
        metric = metric_of(exp, dataset)
        mats = {}
        for key, runs in configs.items():
            if runs[0].dataset.name != dataset.name:
                continue
            try:
                mats[key] = confidence.configuration_scores(
                    root, [r.run_id for r in runs[: counts[key]]], metric
                )
            except confidence.NoItemScores as why:
                unranked[key] = str(why)
        if len({ids for ids, _ in mats.values()}) > 1:
            unranked |= dict.fromkeys(mats, "the configurations were scored on different items")
            mats = {}
        higher = metric not in LOWER_IS_BETTER
        p = confidence.p_best({k: m for k, (_, m) in mats.items()}, higher) if mats else {}
        for key, runs in configs.items():
            if runs[0].dataset.name == dataset.name:
                groups[dataset.name][key] = p.get(key)
    verdicts = decide(groups, counts, rule, round, unranked)
    added = sorted(configs[k][counts[k]].run_id for k, v in verdicts.items() if v.decision == ADD)
    return {
        "round": round,
        "rule": rule.model_dump(),
        "metric": {d.name: metric_of(exp, d) for d in exp.datasets},
        "added_runs": added,
        "configurations": [
            {
                "configuration": key,
                "dataset": configs[key][0].dataset.name,
                "run_ids": [r.run_id for r in configs[key][: v.seeds]],
                **asdict(v),
                "reason": reason(v),
            }
            for key, v in sorted(verdicts.items())
        ],
    }


def decided_runs(exp: Experiment, runs: list[RunConfig], root) -> list[RunConfig]:
    """The runs of the table: `runs` (the first round), plus the seeds the decisions on disk
    added; unchanged without an adaptive rule."""
    if exp.training.adaptive is None:
        return runs
    added = {run_id for d in rounds(root) for run_id in d["added_runs"]}
    if not added:
        return runs
    return runs + [r for r in every_seed(exp) if r.run_id in added]


def why(exp: Experiment, root) -> dict[str, dict]:
    """Run id -> its configuration's latest verdict on disk (every seed's id maps to it), with
    the configuration's seeds so far; {} without an adaptive rule or a decision."""
    if exp.training.adaptive is None:
        return {}
    decisions = rounds(root)
    if not decisions:
        return {}
    counts = seeds_at(exp, decisions)
    configs = configurations(exp)
    out = {}
    for entry in decisions[-1]["configurations"]:
        key = entry["configuration"]
        verdict = entry | {"seeds": counts.get(key, entry["seeds"])}
        for run in configs.get(key, []):
            out[run.run_id] = verdict
    return out
