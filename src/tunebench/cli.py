"""`tunebench validate|plan|run|schema|stage`: thin wrappers over the library and Snakemake."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from pydantic import ValidationError

from tunebench import layout
from tunebench.matrix import SHOWN_AXES, MatrixError, baselines, expand
from tunebench.spec import Experiment, key_path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_EXPERIMENT = "experiments/smoke.yaml"
EXIT_INVALID = 2
MAX_EXPERIMENT_BYTES = 1_000_000
# Experiment files have no use for many aliases; a "billion laughs" file has thousands.
MAX_YAML_ALIASES = 64


class ExperimentError(ValueError):
    pass


def load_experiment(path: str | Path) -> Experiment:
    """Parse and validate an experiment file; ExperimentError names the key path or line."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_EXPERIMENT_BYTES:
            raise ExperimentError(
                f"{path}: larger than {MAX_EXPERIMENT_BYTES} bytes; not an experiment file"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ExperimentError(f"{path}: no such experiment file") from err
    except UnicodeDecodeError as err:
        raise ExperimentError(
            f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})"
        ) from err
    try:
        aliases = sum(
            isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader)
        )
        if aliases > MAX_YAML_ALIASES:
            raise ExperimentError(
                f"{path}: {aliases} YAML aliases (more than {MAX_YAML_ALIASES}); "
                "refusing a file that expands exponentially"
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ExperimentError(
            f"{where}: YAML syntax error: {getattr(err, 'problem', err)}"
        ) from err
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return validate_data(data, str(path))


def validate_data(data: dict, source: str = "experiment") -> Experiment:
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as err:
        lines = [f"{key_path(e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ExperimentError(f"{source}: invalid experiment\n  " + "\n  ".join(lines)) from err
    try:
        expand(exp)
        check_paths(exp)
    except MatrixError as err:
        raise ExperimentError(f"{source}: invalid experiment\n  {err}") from err
    return exp


def path_fields(exp: Experiment):
    """(key path, value) of every file or folder an experiment names."""
    for i, model in enumerate(exp.models):
        if model.path:
            yield f"models[{i}].path", model.path
    for i, data in enumerate(exp.datasets):
        if data.path:
            yield f"datasets[{i}].path", data.path
        for split in ("train", "validation", "test"):
            value = getattr(data.files, split) if data.files else None
            if value:
                yield f"datasets[{i}].files.{split}", value
    if exp.evaluation.lm_eval and exp.evaluation.lm_eval.include_path:
        yield "evaluation.lm_eval.include_path", exp.evaluation.lm_eval.include_path


def check_paths(exp: Experiment, project: Path | None = None) -> None:
    """A relative path must stay inside the project (the directory tunebench runs in); a file
    elsewhere must be named by an absolute path, so that escaping is always deliberate."""
    project = (project or Path.cwd()).resolve()
    for where, value in path_fields(exp):
        if "\x00" in value:
            raise MatrixError(where, "contains a NUL byte")
        path = Path(value)
        if not path.is_absolute() and not (project / path).resolve().is_relative_to(project):
            raise MatrixError(
                where,
                f"{value!r} escapes the project directory {project}; "
                "use an absolute path for a file outside it",
            )


def cmd_validate(args) -> int:
    exp = load_experiment(args.experiment)
    runs = expand(exp)
    print(
        f"{args.experiment}: valid, {len(runs)} runs + {len(baselines(exp))} baselines "
        f"(experiment {exp.name!r})"
    )
    return 0


def cmd_plan(args) -> int:
    from rich.console import Console
    from rich.table import Table

    exp = load_experiment(args.experiment)
    table = Table(title=f"{exp.name}: {len(expand(exp))} runs")
    columns = ["run_id", *SHOWN_AXES]
    for col in columns:
        table.add_column(col)
    for run in expand(exp):
        axes = run.axes() | {"run_id": run.run_id}
        table.add_row(*["" if axes[c] is None else str(axes[c]) for c in columns])
    Console(width=200).print(table)
    return 0


def cmd_schema(args) -> int:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **Experiment.model_json_schema(),
    }
    text = json.dumps(schema, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    return 0


# Result files that record a failure; moving them aside makes Snakemake redo just those steps.
FAILURE_RECORDS = (
    "runs/*/train/result.json",
    "runs/*/eval/result.json",
    "baselines/*/*/eval/result.json",
    "data/*/tokenized/*/manifest.json",
)


def retire_failed_runs(root: Path) -> list[str]:
    """Move failed results aside (kept under attempts/ beside them) so a rerun retries them."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    retried = []
    for pattern in FAILURE_RECORDS:
        for record in root.glob(pattern):
            if json.loads(record.read_text()).get("status", "ok") == "ok":
                continue
            attempts = record.parent / "attempts" / stamp
            attempts.mkdir(parents=True, exist_ok=True)
            shutil.move(str(record), attempts / record.name)
            retried.append(str(record.relative_to(root)))
    return retried


def profile_args(profile: str | None) -> list[str]:
    args = ["--workflow-profile", str(REPO / "workflow" / "profiles" / "default")]
    if profile:
        path = Path(profile) if Path(profile).is_dir() else REPO / "workflow" / "profiles" / profile
        if not path.is_dir():
            raise ExperimentError(f"--profile {profile}: no such profile ({path})")
        args += ["--profile", str(path)]
    return args


def locked_by_another_run(workdir: Path, snakemake_args: list[str]) -> bool:
    """Snakemake locks the directory of a running workflow; say so before it does, clearly."""
    if "--unlock" in snakemake_args:
        return False
    locks = workdir / ".snakemake" / "locks"
    return locks.is_dir() and any(locks.iterdir())


def cmd_run(args) -> int:
    exp = load_experiment(args.experiment)
    if locked_by_another_run(Path.cwd(), args.snakemake):
        # Checked before anything is touched: the other run's files are left alone.
        print(
            f"error: another tunebench run is working in {Path.cwd()} (Snakemake's lock in "
            ".snakemake/locks). Wait for it to finish; if it was killed, clear the stale "
            "lock with: tunebench run EXPERIMENT -- --unlock",
            file=sys.stderr,
        )
        return 1
    root = layout.results_root(exp.name)
    retried = retire_failed_runs(root) if root.exists() else []
    if retried:
        print(f"retrying {len(retried)} failed step(s): {', '.join(retried)}")
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(args.experiment),
        *profile_args(args.profile),
        *args.snakemake,
    ]
    print("+ " + " ".join(command), flush=True)
    code = subprocess.call(command)
    from tunebench import slurm
    from tunebench.report import PARTIAL, compile_comparison

    slurm.link_logs(root, [run.run_id for run in expand(exp)])
    if code != 0 and root.exists() and "--dry-run" not in args.snakemake:
        # Jobs killed by a scheduler never reach `compile`: build a partial table here, with
        # rows for what is missing, so the failures are visible. It is not the workflow's
        # target (comparison.*), so the next run still finishes the matrix.
        try:
            compile_comparison(exp, root, root, partial=True)
            print(f"\npartial comparison (workflow unfinished): {root / PARTIAL}.csv")
        except Exception as err:  # the table is a courtesy here; Snakemake's error stands
            print(f"(no comparison table: {err})", file=sys.stderr)
    table_path = root / "comparison.csv"
    if code != 0 and (root / f"{PARTIAL}.csv").is_file():
        table_path = root / f"{PARTIAL}.csv"
    if table_path.is_file():
        import pandas as pd

        table = pd.read_csv(table_path)
        failed = table[table["status"] != "ok"]
        print(f"\ncomparison: {table_path} ({len(table)} rows)")
        if len(failed):
            print(
                f"{len(failed)} row(s) did not finish: "
                + ", ".join(f"{r.run_id} [{r.status}]" for r in failed.itertuples())
            )
            return code or 1
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check an experiment file; print the number of runs")
    p.add_argument("experiment")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("plan", help="list the runs an experiment expands to")
    p.add_argument("experiment")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("schema", help="print (or write) the experiment JSON schema")
    p.add_argument("--output")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser(
        "run",
        help="run an experiment through Snakemake",
        epilog="arguments after -- go to snakemake, e.g. -- --dry-run",
    )
    p.add_argument("experiment", nargs="?", default=DEFAULT_EXPERIMENT)
    p.add_argument("--profile", help="a profile under workflow/profiles/ (e.g. slurm) or a folder")
    p.set_defaults(func=cmd_run)
    from tunebench import envs_cli, stages

    stages.add_parsers(sub)
    envs_cli.add_parsers(sub)

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.snakemake = extra
    try:
        return args.func(args) or 0
    except ExperimentError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
