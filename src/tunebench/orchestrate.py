"""`tunebench run`: start Snakemake on an experiment, follow it, then say what came of it.

Everything the workflow itself decides (keep going after a failure, retry steps that failed last
time, rerun triggers) lives in the workflow and its default profile, so a bare
`snakemake --configfile EXPERIMENT` behaves the same. This adds only what needs the outcome: a
refusal when another run holds the directory, a view of the runs' progress while it runs
(status.py), a partial table when jobs were killed, and a summary that names the rows that did
not finish, or the first failing job's log.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tunebench import layout, outcomes
from tunebench.experiment import ExperimentError, builtin_model_advice
from tunebench.spec import Experiment

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILES = REPO / "workflow" / "profiles"
# Without a terminal, the progress view is a few plain lines this often (seconds; 0: never).
PROGRESS_EVERY = "TUNEBENCH_PROGRESS_EVERY"
PROGRESS_EVERY_DEFAULT = 30.0
LIVE_REFRESH_SECONDS = 2.0


def profile_args(profile: str | None) -> list[str]:
    """The workflow's own profile always (as bare Snakemake finds it next to the Snakefile),
    plus a global one such as `slurm` by name or folder."""
    args = ["--workflow-profile", str(PROFILES / "default")]
    if profile:
        path = Path(profile) if Path(profile).is_dir() else PROFILES / profile
        if not path.is_dir():
            raise ExperimentError(f"--profile {profile}: no such profile ({path})")
        args += ["--profile", str(path)]
    return args


def check_executor(exp: Experiment, profile: str | None, extra: list[str]) -> None:
    """A run spanning nodes needs Slurm (srun starts its tasks on the job's nodes): say so
    before anything starts, not as a failed row after the data are prepared."""
    if not exp.resources.spans_nodes():
        return
    if executor_of(profile, extra) != "slurm":
        raise ExperimentError(
            "resources.train.nodes > 1: a run spans nodes only as a Slurm job (srun starts one "
            "task per node); run with --profile slurm, or train on one node (remove nodes)"
        )


def executor_of(profile: str | None, extra: list[str]) -> str | None:
    """The executor jobs run through: Snakemake's own option, else the profile's."""
    import yaml

    executor = None
    if profile:
        path = Path(profile) if Path(profile).is_dir() else PROFILES / profile
        executor = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("executor")
    for option, value in itertools.pairwise([*extra, ""]):  # Snakemake's own option wins
        if option in ("--executor", "-e"):
            executor = value
        elif option.startswith("--executor="):
            executor = option.split("=", 1)[1]
    return executor


def locked_by_another_run(workdir: Path, snakemake_args: list[str]) -> bool:
    """Snakemake locks the directory of a running workflow; say so before it does, clearly."""
    if "--unlock" in snakemake_args:
        return False
    locks = workdir / ".snakemake" / "locks"
    return locks.is_dir() and any(locks.iterdir())


def snakemake_command(experiment: str, profile: str | None, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(SNAKEFILE),
        "--configfile",
        str(experiment),
        *profile_args(profile),
        *extra,
    ]


def run(exp: Experiment, experiment: str, profile: str | None, extra: list[str]) -> int:
    if locked_by_another_run(Path.cwd(), extra):
        # Checked before anything is touched: the other run's files are left alone.
        print(
            f"error: another tunebench run is working in {Path.cwd()} (Snakemake's lock in "
            ".snakemake/locks). Wait for it to finish; if it was killed, clear the stale "
            "lock with: tunebench run EXPERIMENT -- --unlock",
            file=sys.stderr,
        )
        return 1
    check_executor(exp, profile, extra)
    advice = builtin_model_advice(exp)
    if profile is None:  # jobs run on this machine: say now if its CPU will crawl
        from tunebench.precision import cpu_precision_warnings

        advice += cpu_precision_warnings(exp)
    for warning in advice:
        print(f"warning: {warning}", file=sys.stderr)
    command = snakemake_command(experiment, profile, extra)
    print("+ " + " ".join(command), flush=True)
    if "--dry-run" in extra or "-n" in extra or "--unlock" in extra:
        return subprocess.call(command)
    code = run_followed(command, exp, experiment)
    if code == 0 and stops_early(extra):
        return summarise_stopped_early(exp, layout.results_root(exp.name), extra)
    return summarise(exp, layout.results_root(exp.name), code)


# Snakemake options that stop the workflow before its last step (compile) by request.
STOPS_EARLY = ("--until", "--omit-from", "--allowed-rules")


def stops_early(extra: list[str]) -> bool:
    return any(arg.split("=", 1)[0] in STOPS_EARLY for arg in extra)


def summarise_stopped_early(exp: Experiment, root: Path, extra: list[str]) -> int:
    """A run asked to stop early (`-- --until RULE`) that did so is a success: say what was
    built, rather than missing a table the request left out."""
    from tunebench.io import read_json
    from tunebench.matrix import dataset_key, expand

    run_ids = [run.run_id for run in expand(exp)]

    def finished(pattern: str) -> int:
        paths = [root / pattern.format(run_id=run_id) for run_id in run_ids]
        return sum(p.is_file() and read_json(p).get("status") == "ok" for p in paths)

    runs = len(run_ids)
    datasets = sum(
        (root / layout.DATA_MANIFEST.format(dataset=dataset_key(d))).is_file() for d in exp.datasets
    )
    print(
        f"\nstopped where asked ({' '.join(extra)}): {datasets} of {len(exp.datasets)} datasets "
        f"prepared, {finished(layout.TRAIN_RESULT)} of {runs} runs trained, "
        f"{finished(layout.EVAL_RESULT)} evaluated; no comparison table yet (tunebench run "
        "without the stop builds the rest)"
    )
    return 0


def progress_every() -> float:
    """Seconds between the plain progress lines, from PROGRESS_EVERY (0 turns them off)."""
    try:
        return max(float(os.environ.get(PROGRESS_EVERY, PROGRESS_EVERY_DEFAULT)), 0.0)
    except ValueError:
        return PROGRESS_EVERY_DEFAULT


def run_followed(command: list[str], exp: Experiment, experiment: str) -> int:
    """Run Snakemake as a child process while a view follows the results folder: on a terminal
    a live view at the bottom with Snakemake's output scrolling above it (all of it also in
    Snakemake's log under .snakemake/log/); without one, Snakemake writes where it always did
    and a few plain lines say how far the runs are every PROGRESS_EVERY seconds."""
    from rich.console import Console

    from tunebench import status

    source = status.Source.of_experiment(exp)
    # The estimator's relative cost of the runs, for the ETA: ready after a few seconds.
    threading.Thread(target=source.predict, args=(experiment,), daemon=True).start()
    console = Console()
    live = console.is_terminal and not console.is_dumb_terminal and sys.stderr.isatty()
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if live else {}
    process = subprocess.Popen(command, text=True, errors="replace", bufsize=1, **piped)
    # A batch job's driver that is cancelled (SIGTERM) lets Snakemake cancel its jobs too.
    forward = signal.signal(signal.SIGTERM, lambda signum, _: process.send_signal(signum))
    try:
        if live:
            # A few files per run each time: a large matrix on a shared file system is read
            # less often.
            every = max(LIVE_REFRESH_SECONDS, len(source.run_ids) / 100)
            return status.follow_live(process, source, console, every)
        return status.follow_plain(process, source, progress_every())
    except KeyboardInterrupt:
        # Snakemake got the same Ctrl-C: let it stop its jobs and release its lock.
        return process.wait()
    finally:
        signal.signal(signal.SIGTERM, forward)
        if process.poll() is None:  # a second Ctrl-C while waiting
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def summarise(exp: Experiment, root: Path, code: int) -> int:
    """Print where the table is and which rows did not finish; the exit status says whether
    every row finished."""
    import pandas as pd

    from tunebench import slurm
    from tunebench.matrix import expand
    from tunebench.reporting.report import PARTIAL, compile_comparison

    if root.exists():
        slurm.link_logs(root, [run.run_id for run in expand(exp)])
    table_path = root / "comparison.csv"
    if code != 0 and root.exists():
        # Jobs killed by a scheduler never reach `compile`: build a partial table here, with
        # rows for what is missing, so the failures are visible. It is not the workflow's
        # target (comparison.*), so the next run still finishes the matrix.
        try:
            table = compile_comparison(exp, root, root, partial=True)
        except ValueError as err:  # e.g. rows scored on different test sets: say so, briefly
            print(f"\n(no partial table: {err})", file=sys.stderr)
            return code
        table_path = root / f"{PARTIAL}.csv"
        if (table["status"] == "ok").any():
            print(f"\npartial comparison (workflow unfinished): {table_path}")
        else:
            print(f"\nno step finished; {first_failure(Path.cwd())}", file=sys.stderr)
            return code
    if not table_path.is_file():
        print(f"\nno comparison table; {first_failure(Path.cwd())}", file=sys.stderr)
        return code or 1
    table = pd.read_csv(table_path)
    failed = table[~table["status"].isin(outcomes.NOT_FAILED)]  # pruned by a search: not failed
    print(f"\ncomparison: {table_path} ({len(table)} rows)")
    if len(failed):
        print(
            f"{len(failed)} row(s) did not finish: "
            + ", ".join(f"{r.run_id} [{r.status}]" for r in failed.itertuples())
        )
    summarise_report(root, partial=table_path.name.startswith(PARTIAL))
    exports_ok = summarise_exports(root)
    return code or (1 if len(failed) or not exports_ok else 0)


def summarise_report(root: Path, partial: bool) -> None:
    """Where the report is, and the best configuration under each budget (its first line)."""
    from tunebench.reporting.report import HTML_REPORT, PARTIAL, RECOMMENDATION

    html = root / (f"{PARTIAL}_report.html" if partial else HTML_REPORT)
    if html.is_file():
        print(f"report: {html} (opens offline in a browser)")
    advice = root / RECOMMENDATION
    if partial or not advice.is_file():
        return
    print(f"recommendation: {advice}")
    budget = None
    for line in advice.read_text().splitlines():
        if line.startswith("## "):
            budget = line[3:]
        elif budget and (line.startswith("- Best: ") or line.startswith("**Nothing fits")):
            print(f"  {budget}: {line.removeprefix('- Best: ').replace('**', '')}")
            budget = None


def summarise_exports(root: Path) -> bool:
    """Name each GGUF export (export:) and whether it and its check finished."""
    from tunebench.io import read_json

    finished = True
    for path in sorted((root / "exports").glob(f"*/*/{layout.RESULT}")):
        result = read_json(path)
        if result["status"] == "ok":
            check = result.get("check", {})
            verdict = "check skipped" if check.get("skipped") else "check passed"
            print(f"export: {path.parent} ({result['export']}, {verdict})")
        else:
            finished = False
            print(f"export: {path.parent} did not finish [{result['status']}]: {result['reason']}")
    return finished


# Snakemake's own log of an invocation: "Error in rule NAME:" ... "log: PATH (check log ...)".
ERROR_IN_RULE = re.compile(r"^Error in rule (\S+):$(.*?)(?=^\S|\Z)", re.M | re.S)
LOG_LINE = re.compile(r"^\s+log: (\S+)", re.M)


def first_failure(workdir: Path) -> str:
    """The first job that failed in the newest Snakemake log: its rule, log and last line."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        return "Snakemake wrote no log (see its output above)"
    found = ERROR_IN_RULE.search(logs[-1].read_text(errors="replace"))
    if not found:
        return f"see Snakemake's log {logs[-1]}"
    rule, block = found.group(1), found.group(2)
    log = LOG_LINE.search(block)
    if not log or not Path(log.group(1)).is_file():
        return f"the first failing job was rule {rule} (Snakemake's log: {logs[-1]})"
    lines = [line for line in Path(log.group(1)).read_text(errors="replace").splitlines() if line]
    last = f": {lines[-1].strip()}" if lines else ""
    return f"the first failing job was rule {rule}, log {log.group(1)}{last}"
