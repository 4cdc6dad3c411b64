"""Where a run's Slurm jobs left their logs, and why a job that wrote no result failed."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tunebench import layout

# snakemake-executor-plugin-slurm writes .snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log
PLUGIN_LOGS = Path(".snakemake") / "slurm_logs"
RULES = ("train", "evaluate")
TRAIN_RULES = ("train", "train_across_nodes")  # a run spanning nodes trains in the second
# The plugin's line in Snakemake's log when it submits a job (a queued job has no log file yet).
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+)\S* \(log: (\S+?)\)\.?$", re.M)


def link_logs(root: Path, run_ids: list[str], workdir: Path | None = None) -> int:
    """Give each run folder a `slurm_logs/<rule>` link to its jobs' Slurm logs."""
    workdir = workdir or Path.cwd()
    linked = 0
    for run_id in run_ids:
        for rule in RULES:
            logs = (workdir / PLUGIN_LOGS / f"rule_{rule}" / run_id).resolve()
            link = layout.run_dir(root, run_id) / "slurm_logs" / rule
            if logs.is_dir() and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(logs, target_is_directory=True)
                linked += 1
    return linked


def job_state(job_id: str) -> str | None:
    """sacct's state of a job ("CANCELLED by 0", "OUT_OF_MEMORY", "TIMEOUT", ...)."""
    if shutil.which("sacct") is None:
        return None
    try:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    states = out.stdout.split()
    return " ".join(states[:3]) if out.returncode == 0 and states else None


def _rule_and_wildcards(log: Path) -> tuple[str, str]:
    return log.parent.parent.name.removeprefix("rule_"), log.parent.name


def submitted_jobs(workdir: Path) -> dict[tuple[str, str], str]:
    """(rule, wildcards) -> the newest Slurm job id of that job: from the plugin's log files
    (any invocation), then from the newest Snakemake log's submissions, which name the jobs
    still queued too. A run's wildcards are its run id."""
    logs = sorted((workdir / PLUGIN_LOGS).glob("rule_*/*/*.log"), key=lambda p: p.stat().st_mtime)
    jobs = {_rule_and_wildcards(log): log.stem for log in logs}
    snakemake_logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    if snakemake_logs:
        text = snakemake_logs[-1].read_text(errors="replace")
        for job, log in SUBMITTED.findall(text):
            jobs[_rule_and_wildcards(Path(log))] = job
    return jobs


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """sacct's state of each job, in one call ("RUNNING", "PENDING", "CANCELLED", ...; a
    requeued job: its latest). Empty without sacct."""
    job_ids = sorted(set(job_ids))
    if not job_ids or shutil.which("sacct") is None:
        return {}
    try:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,State"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        job, _, state = line.partition("|")
        if state.strip():
            states[job.strip()] = state.strip().split(" by ", 1)[0]
    return states


def failure_reason(run_folder: Path, rule: str = "train") -> str | None:
    """For a run whose job wrote no result: its last Slurm job, state and log."""
    logs = run_folder / "slurm_logs" / rule
    jobs = sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime) if logs.is_dir() else []
    if not jobs:
        return None
    last = jobs[-1]
    state = job_state(last.stem) or "no result written"
    return f"slurm job {last.stem}: {state} (log: {last})"


def normalise_cancelled_status() -> bool:
    """Work around snakemake-executor-plugin-slurm (2.8.0): sacct reports a cancelled job as
    "CANCELLED by <uid>", which the plugin does not find in its list of failed states, so it
    polls a scancel'ed job forever and the workflow never ends. Strip " by <uid>" from the
    states it sees. Called from the workflow, which runs in the executor's process. Returns
    whether the patch is in place."""
    try:
        import snakemake_executor_plugin_slurm as plugin
    except ImportError:
        return False
    original = getattr(plugin, "query_job_status", None)
    if original is None:
        return False
    if getattr(original, "tunebench_normalised", False):
        return True

    async def query_job_status(command, logger):
        states, duration = await original(command, logger)
        if states:
            states = {job: state.split(" by ", 1)[0] for job, state in states.items()}
        return states, duration

    query_job_status.tunebench_normalised = True
    plugin.query_job_status = query_job_status
    return True
