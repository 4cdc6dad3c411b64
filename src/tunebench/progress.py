"""Where a workflow stands, read from its results folder in one pass: each run's state, its step,
loss and rates from the progress file its training job rewrites (layout.TRAIN_PROGRESS), its
Slurm job where Snakemake submitted one, and an ETA for the runs left.

Nothing here writes or asks the workflow: the folder (and Snakemake's own log and lock beside
it) is all there is, so `tunebench status` on a login node sees what `tunebench run` sees.
status.py shows a snapshot.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import socket
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tunebench import layout, slurm

# A run's state, in the order a run passes through them; `stopped`: its training process is
# gone without a result (killed, preempted); the next invocation of the workflow redoes it.
# `pruned`: a search (search:) stopped it at a rung; it is a finished row, not a failure.
PENDING, TRAINING, TRAINED, EVALUATING, DONE, FAILED, STOPPED, PRUNED = (
    "pending",
    "training",
    "trained",
    "evaluating",
    "done",
    "failed",
    "stopped",
    "pruned",
)
RUNNING = (TRAINING, EVALUATING)
# A progress file from another host is taken as alive if it changed this recently (it is
# rewritten every few seconds while the run trains; a step may take longer: see is_alive).
STALE_AFTER_SECONDS = 600.0
SNAKEMAKE_STEPS = re.compile(r"(\d+) of (\d+) steps \((\d+)%\) done")


@dataclass
class RunProgress:
    run_id: str
    state: str = PENDING
    step: int | None = None
    max_steps: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None
    seconds_per_step: float | None = None
    eta_seconds: float | None = None  # of its training, from its progress file
    age_seconds: float | None = None  # since its progress file was written
    host: str | None = None
    reason: str = ""  # a failed run's status and reason
    slurm_job: str | None = None
    slurm_state: str | None = None


@dataclass
class Snapshot:
    name: str
    root: Path
    runs: list[RunProgress]
    planned: bool  # the runs are the experiment's (else only those found in the folder)
    workflow_running: bool  # Snakemake holds its lock in the working directory
    snakemake_steps: str | None = None  # "5 of 16 steps (31%) done", its newest log's last
    eta_seconds: float | None = None
    eta_basis: str = ""
    slurm_states: dict[str, str] = field(default_factory=dict)  # job id -> sacct's state
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def counts(self) -> dict[str, int]:
        """Runs done / running / failed / pending (trained, stopped and queued runs wait), and
        pruned by a search."""
        counts = dict.fromkeys(("done", "running", "failed", "pending", "pruned"), 0)
        for run in self.runs:
            bucket = {DONE: "done", FAILED: "failed", PRUNED: "pruned"}.get(run.state)
            counts[bucket or ("running" if run.state in RUNNING else "pending")] += 1
        return counts


def _number(value) -> float | None:
    """A finite number from a file someone else wrote, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _integer(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read(path: Path) -> dict | None:
    """A JSON object, or None for a file that is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    except (OverflowError, ValueError):
        return False
    return True


def is_alive(progress: dict, age: float | None, stale_after: float) -> bool:
    """Whether the process that writes a progress file still runs: on this host its pid says;
    from another host (a Slurm node) only the file's age can, allowing for long steps."""
    pid = progress.get("pid")
    if progress.get("host") == socket.gethostname() and isinstance(pid, int):
        return pid_alive(pid)
    if age is None:
        return False
    return age <= max(stale_after, 3 * (_number(progress.get("seconds_per_step")) or 0))


def _age(progress: dict, now: datetime) -> float | None:
    try:
        updated = datetime.fromisoformat(str(progress.get("updated_at")))
    except ValueError:
        return None
    if updated.tzinfo is None:
        updated = updated.replace(tzinfo=UTC)
    return max((now - updated).total_seconds(), 0.0)


def from_progress_file(row: RunProgress, path: Path, now: datetime, stale_after: float) -> None:
    """Fill a run without a training result from its progress file: training if the process
    that writes it is alive, stopped if not; pending when there is no usable file."""
    progress = _read(path)
    if progress is None or _integer(progress.get("step")) is None:
        return
    age = _age(progress, now)
    row.step, row.max_steps = progress["step"], _integer(progress.get("max_steps"))
    row.loss = _number(progress.get("loss"))
    row.tokens_per_second = _number(progress.get("tokens_per_second"))
    row.seconds_per_step = _number(progress.get("seconds_per_step"))
    row.host = progress.get("host") if isinstance(progress.get("host"), str) else None
    row.age_seconds = age
    row.state = TRAINING if is_alive(progress, age, stale_after) else STOPPED
    eta = _number(progress.get("eta_seconds"))
    if row.state == TRAINING and eta is not None:
        row.eta_seconds = max(eta - (age or 0.0), 0.0)


def pruned_runs(root: Path) -> dict[str, str]:
    """Run id -> why, for the runs a search's decisions on disk pruned (search/halving.py)."""
    out = {}
    for rung in range(100):  # the decisions are numbered from 0, one per rung but the last
        decision = _read(root / layout.SEARCH_DECISION.format(rung=rung))
        if decision is None:
            break
        for candidate in decision.get("candidates", []):
            if candidate.get("decision") == "pruned":
                for run_id in candidate.get("run_ids", []):
                    out[run_id] = f"pruned by the search at rung {rung}"
    return out


def run_progress(
    root: Path, run_id: str, now: datetime, stale_after: float, pruned: dict | None = None
) -> RunProgress:
    """One run's state from the files of its folder (`pruned`: pruned_runs)."""
    row = RunProgress(run_id)
    folder = layout.run_dir(root, run_id)
    train = _read(layout.train_result_in(folder))
    if train is None and run_id in (pruned or {}):
        row.state, row.reason = PRUNED, pruned[run_id]
        return row
    if train is None:
        from_progress_file(row, layout.train_progress_in(folder), now, stale_after)
        return row
    row.step = row.max_steps = _integer(train.get("steps"))
    row.loss = _number(train.get("train_loss_last"))
    row.tokens_per_second = _number(train.get("tokens_per_second"))
    if train.get("status") != "ok":
        row.state, row.reason = FAILED, f"{train.get('status')}: {train.get('reason', '')}"
        return row
    evaluation = _read(root / layout.EVAL_RESULT.format(run_id=run_id))
    if evaluation is None:
        # The evaluation job's log appears when it starts (Snakemake redirects into it).
        log = root / layout.LOG.format(rule="evaluate", name=run_id)
        trained = layout.train_result_in(folder)
        started = log.is_file() and log.stat().st_mtime >= trained.stat().st_mtime
        row.state = EVALUATING if started else TRAINED
    elif evaluation.get("status") == "ok":
        row.state = DONE
    else:
        status = evaluation.get("status")
        row.state, row.reason = FAILED, f"{status}: {evaluation.get('reason', '')}"
    return row


def job_seconds(root: Path, rule: str, run_id: str) -> float | None:
    """Wall seconds of a finished job, process start included (Snakemake's benchmark file)."""
    path = root / layout.BENCHMARK.format(rule=rule, name=run_id)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        return _number(float(rows[-1]["s"])) if rows else None
    except (OSError, KeyError, ValueError):
        return None


def estimate_left(
    snapshot: Snapshot, predicted: dict[str, float] | None
) -> tuple[float | None, str]:
    """Seconds until every run is done, and what the figure rests on.

    A training run costs its own ETA (its progress file). A run not started costs the
    estimator's predicted training time (`predicted`, run id -> seconds, from
    tunebench.estimate) times the median ratio measured here between training and its
    prediction, else the mean measured training job. Each run still to evaluate adds the
    mean measured evaluation job. The total is shared among the jobs running now. Only runs
    count: data preparation, baselines and the report are not in it."""
    left = [run for run in snapshot.runs if run.state not in (DONE, FAILED, PRUNED)]
    if not snapshot.workflow_running or not left:  # nothing will (or is left to) finish
        return None, ""
    predicted = predicted or {}
    walls = {
        run.run_id: wall
        for run in snapshot.runs
        if run.state in (TRAINED, EVALUATING, DONE)
        and (wall := job_seconds(snapshot.root, "train", run.run_id))
    }
    ratios = [wall / predicted[run_id] for run_id, wall in walls.items() if predicted.get(run_id)]
    if not walls:  # before any training job has ended: the training runs' projections
        ratios = [
            run.seconds_per_step * run.max_steps / predicted[run.run_id]
            for run in snapshot.runs
            if run.state == TRAINING
            and run.seconds_per_step
            and run.max_steps
            and predicted.get(run.run_id)
        ]
    ratio = statistics.median(ratios) if ratios else None
    evals = [job_seconds(snapshot.root, "evaluate", run.run_id) for run in snapshot.runs]
    evals = [seconds for seconds in evals if seconds]

    def training_left(run: RunProgress) -> float | None:
        if run.state in (TRAINED, EVALUATING):
            return 0.0
        if run.state == TRAINING and run.eta_seconds is not None:
            return run.eta_seconds
        if ratio is not None and predicted.get(run.run_id):
            return ratio * predicted[run.run_id]
        return statistics.mean(walls.values()) if walls else None

    costs = [training_left(run) for run in left]
    if None in costs:
        return None, "after the first run has trained a few steps"
    at_once = max(sum(run.state in RUNNING for run in snapshot.runs), 1)
    total = sum(costs) + len(left) * (statistics.mean(evals) if evals else 0.0)
    basis = [f"from {len(walls)} trained and {len(evals)} evaluated runs"]
    basis += ["scaled by the estimator"] if ratio is not None else []
    basis += [] if evals else ["evaluation not timed yet"]
    return total / at_once, ", ".join([*basis, f"{at_once} at a time"])


def predicted_train_seconds(exp, runs) -> dict[str, float]:
    """The estimator's training time of each run on the experiment's first GPU: only the
    runs' relative cost matters here (estimate_left scales it by what is measured). Empty
    when nothing can be estimated."""
    try:
        from tunebench.estimate.runs import estimate_experiment, experiment_gpus

        gpu = experiment_gpus(exp)[0]
        records = estimate_experiment(exp, runs, [gpu])
    except Exception:  # noqa: BLE001 - the ETA is a convenience: without it, measured rates
        return {}
    hours = {r["run_id"]: r.get("gpus", {}).get(gpu.name, {}).get("train_hours") for r in records}
    return {run_id: h * 3600 for run_id, h in hours.items() if h}


def predict_apart(experiment_file: str | Path) -> dict[str, float]:
    """predicted_train_seconds in a process of its own: the estimator imports torch (seconds,
    hundreds of MB, and libraries' console noise) that a watcher does not need to hold."""
    import subprocess
    import sys

    try:
        out = subprocess.run(
            [sys.executable, "-m", "tunebench.progress", str(experiment_file)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        predicted = json.loads(out.stdout) if out.returncode == 0 else {}
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}
    return predicted if isinstance(predicted, dict) else {}


def tail(path: Path, size: int = 65536) -> str:
    """The end of a file that may be large (a long workflow's Snakemake log)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - size, 0))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def snakemake_steps(workdir: Path) -> str | None:
    """Snakemake's own count of the newest invocation, "5 of 16 steps (31%) done"."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    found = SNAKEMAKE_STEPS.findall(tail(logs[-1])) if logs else []
    return f"{found[-1][0]} of {found[-1][1]} steps ({found[-1][2]}%) done" if found else None


def workflow_running(workdir: Path) -> bool:
    """Snakemake holds a lock in the working directory while a workflow runs there."""
    locks = workdir / ".snakemake" / "locks"
    return locks.is_dir() and any(locks.iterdir())


def with_slurm_jobs(
    runs: list[RunProgress], workdir: Path, states: dict[str, str] | None = None
) -> dict[str, str]:
    """Give each run its newest Slurm job (evaluation's once trained, else training's) and
    that job's state: from `states` if given (a watcher asks sacct less often than it looks),
    else from sacct. Returns the states."""
    jobs = slurm.submitted_jobs(workdir)
    if not jobs:
        return {}
    for run in runs:
        rules = ("evaluate",) if run.state in (TRAINED, EVALUATING, DONE) else ()
        for rule in (*rules, *slurm.TRAIN_RULES):
            if (rule, run.run_id) in jobs:
                run.slurm_job = jobs[(rule, run.run_id)]
                break
    if states is None:
        states = slurm.job_states(run.slurm_job for run in runs if run.slurm_job)
    for run in runs:
        run.slurm_state = states.get(run.slurm_job)
    return states


def run_ids_found(root: Path) -> list[str]:
    """The runs of a results folder whose experiment is not known: the folders present."""
    runs = root / layout.RUN.format(run_id="")
    return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def take(
    name: str,
    root: Path,
    run_ids: list[str] | None,
    workdir: Path,
    predicted: dict[str, float] | None = None,
    stale_after: float = STALE_AFTER_SECONDS,
    slurm_states: dict[str, str] | None = None,
) -> Snapshot:
    """A snapshot of the results folder `root` of a workflow run in `workdir`. `run_ids`: the
    experiment's runs (None: those whose folders exist); `predicted`: see estimate_left;
    `slurm_states`: sacct's states if just asked (None: ask)."""
    now = datetime.now(UTC)
    planned = run_ids is not None
    ids = run_ids if planned else run_ids_found(root)
    pruned = pruned_runs(root)
    snapshot = Snapshot(
        name=name,
        root=root,
        runs=[run_progress(root, run_id, now, stale_after, pruned) for run_id in ids],
        planned=planned,
        workflow_running=workflow_running(workdir),
        snakemake_steps=snakemake_steps(workdir),
        taken_at=now,
    )
    snapshot.slurm_states = with_slurm_jobs(snapshot.runs, workdir, slurm_states)
    snapshot.eta_seconds, snapshot.eta_basis = estimate_left(snapshot, predicted)
    return snapshot


if __name__ == "__main__":  # predict_apart's process: the experiment file -> JSON on stdout
    import sys

    from tunebench.experiment import load_experiment
    from tunebench.matrix import expand

    experiment = load_experiment(sys.argv[1])
    print(json.dumps(predicted_train_seconds(experiment, expand(experiment))))
