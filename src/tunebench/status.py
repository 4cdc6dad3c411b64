"""`tunebench status` and the live view of `tunebench run`: a workflow's progress (progress.py)
shown once, kept up to date on a terminal (rich), or printed as plain lines every so often
where there is no terminal (CI, make under a pipe, a Slurm batch job's log)."""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tunebench import layout, progress
from tunebench.progress import RUNNING, Snapshot

# sacct is a query to the cluster's database: a watcher asks it this often, not every refresh.
SACCT_EVERY_SECONDS = 60.0
# Shown in a view unless every run is asked for: what a person has to act on or wait for.
NOTEWORTHY = (*RUNNING, progress.TRAINED, progress.STOPPED, progress.FAILED)


def duration(seconds: float | None) -> str:
    return "" if seconds is None else str(timedelta(seconds=round(seconds)))


class Source:
    """Snapshots of one workflow's results folder, with what stays the same between them: the
    runs of the experiment, the estimator's prediction, sacct's states for a minute."""

    def __init__(
        self,
        name: str,
        root: Path,
        run_ids: list[str] | None,
        workdir: Path,
        stale_after: float = progress.STALE_AFTER_SECONDS,
    ):
        self.name, self.root, self.run_ids, self.workdir = name, root, run_ids, workdir
        self.stale_after = stale_after
        self.predicted: dict[str, float] | None = None
        self.states: dict[str, str] | None = None
        self.asked = -float("inf")

    @classmethod
    def of_experiment(cls, exp, workdir: Path | None = None, **kwargs) -> Source:
        from tunebench.matrix import expand

        workdir = workdir or Path.cwd()
        root = workdir / layout.results_root(exp.name)
        return cls(exp.name, root, [run.run_id for run in expand(exp)], workdir, **kwargs)

    def predict(self, experiment_file: str | Path) -> None:
        """The estimator's training time of each run, for the ETA of runs not started."""
        self.predicted = progress.predict_apart(experiment_file)

    def snapshot(self) -> Snapshot:
        fresh = time.monotonic() - self.asked < SACCT_EVERY_SECONDS
        shot = progress.take(
            self.name,
            self.root,
            self.run_ids,
            self.workdir,
            self.predicted,
            self.stale_after,
            self.states if fresh else None,
        )
        if not fresh:
            self.states, self.asked = shot.slurm_states, time.monotonic()
        return shot


def summary(snapshot: Snapshot, basis: bool = True) -> str:
    """One line: the runs done / running / failed / pending, and the ETA (with what it rests
    on unless `basis` is False)."""
    counts = snapshot.counts()
    line = (
        f"{snapshot.name}: {counts['done']} of {len(snapshot.runs)} runs done, "
        f"{counts['running']} running, {counts['failed']} failed, {counts['pending']} pending"
    )
    if counts["pruned"]:
        line += f", {counts['pruned']} pruned by the search"
    if not snapshot.planned:
        line += " (the runs found in the folder: name the experiment file for every run)"
    if snapshot.eta_seconds is None:
        return line + (f"; ETA: {snapshot.eta_basis}" if snapshot.eta_basis else "")
    return (
        line
        + f"; ETA {duration(snapshot.eta_seconds)}"
        + (f" ({snapshot.eta_basis})" if basis else "")
    )


def workflow_line(snapshot: Snapshot) -> str:
    """Snakemake's own count of its steps, and what the ETA rests on."""
    if not snapshot.workflow_running:
        return "Snakemake is not running here (no lock in .snakemake/locks)"
    line = "Snakemake: " + (snapshot.snakemake_steps or "starting")
    if snapshot.eta_seconds is not None:
        line += f"; ETA {snapshot.eta_basis}"
    return line


def _cells(run: progress.RunProgress) -> dict[str, str]:
    step = (
        "" if run.step is None else f"{run.step}" + (f"/{run.max_steps}" if run.max_steps else "")
    )
    slurm = " ".join(str(s) for s in (run.slurm_job, run.slurm_state) if s)
    return {
        "run": run.run_id,
        "state": run.state + (f" ({run.reason})" if run.reason else ""),
        "step": step,
        "loss": "" if run.loss is None else f"{run.loss:.4g}",
        "tokens/s": "" if run.tokens_per_second is None else f"{run.tokens_per_second:,.0f}",
        "ETA": duration(run.eta_seconds),
        "Slurm job": slurm,
        "updated": "" if run.age_seconds is None else f"{duration(run.age_seconds)} ago",
    }


def shown(snapshot: Snapshot, every: bool = False) -> list[progress.RunProgress]:
    return [r for r in snapshot.runs if every or r.state in NOTEWORTHY]


def render(snapshot: Snapshot, every: bool = False, workflow: str | None = None) -> RenderableType:
    """The view: the summary, Snakemake's own count (or `workflow`), and a row per run worth a
    look (every run with `every`): its state, step of max steps, last loss, tokens/s, ETA and
    Slurm job."""
    header = Text(summary(snapshot, basis=False), style="bold")
    below = Text(workflow or workflow_line(snapshot), style="dim")
    runs = shown(snapshot, every)
    if not runs:
        return Group(header, below)
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = list(_cells(runs[0]))
    with_slurm = any(r.slurm_job for r in runs)
    for column in columns:
        if column != "Slurm job" or with_slurm:
            table.add_column(
                column, overflow="fold", justify="right" if column != "run" else "left"
            )
    for run in runs:
        cells = _cells(run)
        table.add_row(*(cells[c] for c in columns if c != "Slurm job" or with_slurm))
    return Group(header, below, table)


def plain_lines(snapshot: Snapshot) -> list[str]:
    """The view as lines of text for a log: the summary, then one line per running run."""
    lines = [f"[{time.strftime('%H:%M:%S')}] {summary(snapshot)}"]
    for run in snapshot.runs:
        if run.state not in RUNNING:
            continue
        cells = _cells(run)
        parts = [f"step {cells['step']}" if cells["step"] else ""]
        parts += [f"loss {cells['loss']}" if cells["loss"] else ""]
        parts += [f"{cells['tokens/s']} tokens/s" if cells["tokens/s"] else ""]
        parts += [f"ETA {cells['ETA']}" if cells["ETA"] else "", cells["Slurm job"]]
        lines.append(f"  {run.run_id}: {run.state} " + ", ".join(p for p in parts if p))
    return lines


def follow_live(process: subprocess.Popen, source: Source, console: Console, every: float) -> int:
    """Until `process` exits: its output (a pipe) printed as it comes, with the view below it,
    redrawn every `every` seconds. Returns its exit status."""
    with Live(render(source.snapshot()), console=console, auto_refresh=False) as live:

        def copy() -> None:
            for line in process.stdout:
                live.console.print(Text.from_ansi(line.rstrip("\n")), soft_wrap=True)

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        while True:
            try:
                code = process.wait(timeout=every)
                break
            except subprocess.TimeoutExpired:
                live.update(_safe_render(source, live), refresh=True)
        reader.join(timeout=10)
        end = f"Snakemake has finished (exit status {code})"
        live.update(_safe_render(source, live, end), refresh=True)
    return code


def _safe_render(source: Source, live: Live, workflow: str | None = None) -> RenderableType:
    """A new view; the last one where the folder could not be read (the view never stops the
    workflow it watches)."""
    try:
        return render(source.snapshot(), workflow=workflow)
    except Exception:  # noqa: BLE001 - e.g. a file removed between listing and reading it
        return live.renderable


def follow_plain(process: subprocess.Popen, source: Source, every: float) -> int:
    """Until `process` exits (its output going where ours goes): the view as plain lines on
    stdout every `every` seconds; never when `every` is 0. Returns its exit status."""
    while True:
        try:
            return process.wait(timeout=every or None)
        except subprocess.TimeoutExpired:
            try:
                lines = plain_lines(source.snapshot())
            except Exception:  # noqa: BLE001 - the view never stops the workflow it watches
                continue
            print("\n".join(lines), flush=True)


def source_for(target: str, workdir: str | None, stale_after: float) -> tuple[Source, Path | None]:
    """(the snapshots' source, the experiment's file or None) for an experiment file or a
    results folder; a folder's experiment is its experiment.json (written with its table)."""
    from tunebench.experiment import load_experiment, validate_data
    from tunebench.reporting.report import EXPERIMENT_RECORD

    path = Path(target)
    if not path.is_dir():
        exp = load_experiment(path)
        return Source.of_experiment(exp, Path(workdir or "."), stale_after=stale_after), path
    root = path.resolve()
    # results/<name> sits in the directory Snakemake runs in (its .snakemake folder).
    guess = root.parents[1] if root.parent.name == "results" else Path.cwd()
    where = Path(workdir) if workdir else guess
    record = root / EXPERIMENT_RECORD
    if record.is_file():
        exp = validate_data(json.loads(record.read_text()), str(record))
        source = Source.of_experiment(exp, where, stale_after=stale_after)
        source.root = root
        return source, record
    return Source(root.name, root, None, where, stale_after), None


def cmd_status(args) -> int:
    source, experiment = source_for(args.target, args.workdir, args.stale_after)
    running = progress.workflow_running(source.workdir)
    if experiment is not None and running and not args.no_estimate:
        source.predict(experiment)
    console = Console()
    terminal = console.is_terminal
    if not terminal:  # a log or a pipe: lines as long as a wide terminal's
        console = Console(width=160)
    if not args.watch:
        console.print(render(source.snapshot(), args.all))
        return 0
    try:
        if not terminal:  # a log: the view again every so often, one after the other
            while True:
                console.print(render(source.snapshot(), args.all), "")
                time.sleep(args.watch)
        with Live(render(source.snapshot(), args.all), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(args.watch)
                live.update(render(source.snapshot(), args.all), refresh=True)
    except KeyboardInterrupt:
        return 0


def add_parsers(sub, formatter=argparse.HelpFormatter) -> None:
    """`tunebench status`, registered by the CLI (`formatter`: its help format, which shows
    each option's default)."""
    p = sub.add_parser(
        "status",
        help="where a workflow stands, from any shell: runs done / running / failed / pending, "
        "each running run's step, loss, tokens/s, ETA and Slurm job",
        description="Where a workflow stands, read from its results folder and from Snakemake's\n"
        "lock, log and Slurm logs in the directory it runs in. A run's step, loss and rate\n"
        "come from the file its training job rewrites every few seconds\n"
        "(runs/RUN/train/progress.json). It only reads: safe while the workflow runs, e.g. on\n"
        "a login node while the jobs run on Slurm.",
        formatter_class=formatter,
    )
    p.add_argument(
        "target",
        metavar="EXPERIMENT|RESULTS",
        help="an experiment file, or a results folder such as results/smoke (without the "
        "experiment.json its table writes, only the runs found in the folder are shown)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="a row for every run, not only those running, stopped, waiting for evaluation "
        "or failed",
    )
    p.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="redraw every SECONDS until Ctrl-C (default: show once)",
    )
    p.add_argument(
        "--no-estimate",
        action="store_true",
        help="the ETA from measured rates alone, without the estimator's relative cost of "
        "the runs not started (it imports torch: a few seconds)",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=progress.STALE_AFTER_SECONDS,
        metavar="SECONDS",
        help="a run training on another host whose progress file has not changed for this "
        "long (and for three of its steps) counts as stopped",
    )
    p.add_argument(
        "--workdir",
        help="the directory Snakemake runs in, holding .snakemake/ (default: the current "
        "directory for an experiment file; for results/NAME, the folder holding results/)",
    )
    p.set_defaults(func=cmd_status)
