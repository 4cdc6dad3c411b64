"""The `tunebench` command: parse the command line, call the library. Exit codes: 0 done, 1 a
run, step or export failed (or Snakemake did), 2 invalid input (an experiment file, an argument,
a GPU name)."""

from __future__ import annotations

import argparse
import json
import sys

from tunebench.experiment import ExperimentError, load_experiment

DEFAULT_EXPERIMENT = "experiments/smoke.yaml"
EXIT_INVALID = 2
DESCRIPTION = """\
Fine-tuning methods compared by measurement. One experiment file names models, methods (full,
LoRA, QLoRA, DoRA, rsLoRA; SFT, DPO, ORPO), their axes and datasets; tunebench expands it into a
matrix of runs that Snakemake prepares, trains, evaluates (the untuned base model too) and
compiles into one table of quality, memory, time and cost, with a report that recommends a
configuration under your budgets.

typical use:
  tunebench validate EXPERIMENT.yaml   check the file, count the runs
  tunebench estimate EXPERIMENT.yaml   predicted GPU memory, time and cost of every run
  tunebench run EXPERIMENT.yaml        run the matrix here (--profile slurm: on a cluster)
  tunebench status EXPERIMENT.yaml     how far a running matrix is, from any shell
  tunebench report results/NAME        re-render the table, recommendation and report
  tunebench reproduce --list           published comparisons to reproduce with one command

exit codes: 0 done; 1 a run, step or export failed; 2 invalid input (file, argument, GPU).
docs: docs/ in the repository (the site: mkdocs serve)."""


def check_gpu_names(names: list[str] | None) -> None:
    """An unknown --gpu is invalid input, the same message and exit code for every command."""
    from tunebench.estimate.gpus import find

    for name in names or []:
        try:
            find(name)
        except KeyError as err:
            raise ExperimentError(f"--gpu: {err.args[0]}") from err


def cmd_validate(args) -> int:
    from tunebench.matrix import baselines, expand

    exp = load_experiment(args.experiment)
    print(
        f"{args.experiment}: valid, {len(expand(exp))} runs + {len(baselines(exp))} baselines "
        f"(experiment {exp.name!r})"
    )
    return 0


def cmd_plan(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from tunebench.matrix import SHOWN_AXES, expand

    check_gpu_names(args.gpu)
    exp = load_experiment(args.experiment)
    runs = expand(exp)
    table = Table(title=f"{exp.name}: {len(runs)} runs")
    columns = ["run_id", *SHOWN_AXES]
    estimates = {}
    if not args.no_estimate:
        from tunebench.estimate.runs import estimate_experiment, experiment_gpus

        gpu = experiment_gpus(exp, args.gpu)[0]
        estimates = {r["run_id"]: r for r in estimate_experiment(exp, runs, [gpu])}
        columns += ["peak GiB", f"on {gpu.name}", "hours"]
    for col in columns:
        table.add_column(col)
    for run in runs:
        axes = run.axes() | {"run_id": run.run_id}
        cells = ["" if axes[c] is None else str(axes[c]) for c in columns[: 1 + len(SHOWN_AXES)]]
        if estimates:
            record = estimates[run.run_id]
            if "error" in record:
                cells += ["n/a", record["error"][:60], ""]
            else:
                on_gpu = record["gpus"][gpu.name]
                cells += [
                    f"{record['predicted_peak_gb']:.2f}",
                    on_gpu["verdict"],
                    _maybe(on_gpu["train_hours"], "{:.2f}"),
                ]
        table.add_row(*cells)
    Console(width=200).print(table)
    _say_calibration(list(estimates.values()))
    return print_search_plan(exp, runs, estimated=not args.no_estimate)


def print_search_plan(exp, runs, estimated: bool = True) -> int:
    """The search plan (search:) below the runs; a budget too small for it is an error."""
    from tunebench.search import halving

    if exp.search is None:
        return 0
    if not estimated and exp.search.budget.unit != "steps":
        print(f"search: a budget in {exp.search.budget.unit} needs the estimate (no --no-estimate)")
        return 0
    lines = halving.plan_text(exp, runs)
    print("\n".join(lines))
    return EXIT_INVALID if lines[0].startswith("search: search.budget") else 0


def cmd_preflight(args) -> int:
    from tunebench import preflight

    if args.steps < 1:
        print("error: --steps must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    return preflight.run(args.experiment, args.steps, args.profile)


def cmd_estimate(args) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from tunebench.estimate.runs import estimate_experiment, experiment_gpus
    from tunebench.matrix import expand

    check_gpu_names(args.gpu)
    exp = load_experiment(args.experiment)
    runs = expand(exp)
    gpus = experiment_gpus(exp, args.gpu)
    records = estimate_experiment(exp, runs, gpus)
    if args.json:
        from tunebench.search import halving

        search = {"search": halving.plan_text(exp, runs)} if exp.search else {}
        print(json.dumps({"experiment": exp.name, "runs": records, **search}, indent=1))
        return 0
    first = gpus[0]
    table = Table(
        title=f"{exp.name}: predicted peak GPU memory (GiB) per run, time and cost on {first.name}",
        caption="allocated: what tensors need; reserved: with the allocator's overhead "
        "(what nvidia-smi shows, less the CUDA context). fits / tight (over 90% of the "
        "GPU) / no. docs/estimator.md says how each term is counted and how accurate it is.",
    )
    columns = [
        "run_id",
        "trainable",
        "weights",
        "grads+optim",
        "activations",
        "logits",
        "allocated",
        "reserved",
        *[g.name for g in gpus],
        "step s",
        "hours",
        "cost",
    ]
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in records:
        if "error" in r:
            table.add_row(r["run_id"], f"[red]{r['error']}[/red]")
            continue
        m, on_first = r["memory_gib"], r["gpus"][first.name]
        cells = [
            r["run_id"],
            f"{r['trainable_params']:,}",
            f"{m['weights'] + m['quantization_constants']:.2f}",
            f"{m['trainable_parameters'] + m['gradients'] + m['optimizer_states']:.2f}",
            f"{m['activations']:.2f}",
            f"{m['logits_and_loss']:.2f}",
            f"{m['peak_allocated']:.2f}",
            f"{m['peak_reserved']:.2f}",
            *[r["gpus"][g.name]["verdict"].replace("does not fit", "no") for g in gpus],
            _maybe(on_first["step_seconds"], "{:.3f}"),
            _maybe(on_first["train_hours"], "{:.2f}"),
            _maybe(on_first.get("cost"), "{:.2f} " + exp.cost.currency),
        ]
        table.add_row(*cells)
    Console(width=220).print(table)
    _say_calibration(records)
    return print_search_plan(exp, runs)


def _say_calibration(records: list[dict]) -> None:
    """Which estimates a preflight scaled (estimate/machine_calibration.py)."""
    calibrated = [r for r in records if "calibrated_by" in r]
    if calibrated:
        print(
            f"{len(calibrated)} of {len(records)} runs calibrated by a "
            f"{calibrated[0]['calibrated_by']} (per shape; delete the file for the counted "
            "estimate)"
        )


def _maybe(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def cmd_report(args) -> int:
    """Re-render the table, recommendation, charts and HTML report of a results folder."""
    from pathlib import Path

    from tunebench.reporting.report import EXPERIMENT_RECORD, compile_comparison

    root = Path(args.results)
    if root.is_file():  # an experiment file: its results folder
        from tunebench import layout

        exp = load_experiment(root)
        root = layout.results_root(exp.name)
    elif args.experiment:
        exp = load_experiment(args.experiment)
    elif (root / EXPERIMENT_RECORD).is_file():
        from tunebench.experiment import validate_data

        exp = validate_data(json.loads((root / EXPERIMENT_RECORD).read_text()))
    else:
        print(
            f"error: {root} has no {EXPERIMENT_RECORD} (written when the workflow compiles its "
            "table): give the experiment file with --experiment",
            file=sys.stderr,
        )
        return EXIT_INVALID
    out = Path(args.out) if args.out else root
    compile_comparison(exp, root, out, partial=args.partial)
    name = "comparison_partial_report.html" if args.partial else "report.html"
    print(f"report: {out / name}\nrecommendation: {out / 'recommendation.md'}")
    return 0


def cmd_schema(args) -> int:
    from tunebench import reference

    text = reference.markdown() if args.markdown else reference.json_schema()
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    return 0


def cmd_run(args) -> int:
    from tunebench import orchestrate

    exp = load_experiment(args.experiment)
    return orchestrate.run(exp, args.experiment, args.profile, args.snakemake)


def cmd_reproduce(args) -> int:
    from tunebench import orchestrate, presets

    if args.list:
        return _list_presets(args.gpu)
    if not args.preset:
        print("error: name a preset, or --list to see them", file=sys.stderr)
        return EXIT_INVALID
    mode = "rehearsal" if args.rehearse else "resources" if args.resources else "full"
    try:
        experiment = presets.derive(presets.preset_path(args.preset), mode, args.steps)
    except presets.PresetError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{mode}: {experiment}")
    exp = load_experiment(experiment)
    return orchestrate.run(exp, str(experiment), args.profile, args.snakemake)


def _list_presets(gpu: str | None) -> int:
    from rich.console import Console
    from rich.table import Table

    from tunebench import presets

    check_gpu_names([gpu] if gpu else None)
    table = Table(title="tunebench reproduce NAME [--resources | --rehearse]")
    for column in ("preset", "published", "needs (hub)", "GPU memory and time (estimate)"):
        table.add_column(column, overflow="fold")
    for name in presets.names():
        exp = load_experiment(presets.preset_path(name))
        need = presets.needs(exp)
        estimate = presets.estimate_needs(exp, gpu or presets.estimate_gpu(exp))
        hours = (
            "hours: set by the data (epochs)"
            if estimate["hours"] is None
            else f"{estimate['hours']:.1f} h in all"
        )
        peaks = [
            f"{label} {peak:.1f} GiB ({estimate['verdicts'][label]})"
            for label, peak in estimate["peaks_gb"].items()
        ]
        table.add_row(
            name,
            f"{need['study']}\npublished on: {need['hardware']}\n{need['cells']} cells of "
            + ", ".join(need["measures"]),
            "models: " + ", ".join(need["models"]) + "\ndata: " + ", ".join(need["datasets"]),
            f"on {estimate['gpu']}: "
            + "; ".join(peaks)
            + f"\n{hours}"
            + "".join(f"\n{e}" for e in estimate["errors"][:2]),
        )
    Console(width=200).print(table)
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from tunebench import layout
    from tunebench.export.run import ExportError, describe_export, export_run

    exp = load_experiment(args.experiment)
    root = layout.results_root(exp.name)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    out = Path(args.out) if args.out else root / layout.EXPORT.format(run_id=args.run)
    try:
        manifest = export_run(
            layout.run_dir(root, args.run), out=out, types=types, check=not args.no_check
        )
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(describe_export(manifest, out))
    return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their lines; every option with a default shows it (argparse's
    ArgumentDefaultsHelpFormatter also prints "(default: None)" for options that have none)."""

    def _get_help_string(self, action):
        shown = action.default not in (None, False, argparse.SUPPRESS)
        return f"{action.help} (default: %(default)s)" if shown else action.help


# Commands that start Snakemake, the only ones that take arguments after `--`.
PASSES_TO_SNAKEMAKE = ("run", "reproduce")


def add_experiment(p, **kwargs) -> None:
    p.add_argument("experiment", help="the experiment file (YAML)", **kwargs)


def add_profile(p) -> None:
    p.add_argument(
        "--profile",
        help="run the jobs through a Snakemake profile: one under workflow/profiles/ by name "
        "(slurm) or a folder; default: on this machine",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunebench", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tunebench {version()}")
    # Internal commands (stage, env record) have no help line, so they stay out of this list.
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    def command(name: str, help: str, **kwargs):
        return sub.add_parser(
            name, help=help, description=help, formatter_class=HelpFormatter, **kwargs
        )

    p = command("validate", "check an experiment file; print the number of runs")
    add_experiment(p)
    p.set_defaults(func=cmd_validate)

    p = command("plan", "list the runs an experiment expands to, with predicted memory and time")
    add_experiment(p)
    p.add_argument(
        "--gpu", action="append", help="the GPU to predict for (as for estimate); repeatable"
    )
    p.add_argument(
        "--no-estimate", action="store_true", help="list runs only (no torch import, faster)"
    )
    p.set_defaults(func=cmd_plan)

    p = command(
        "estimate", "predict every run's peak GPU memory, step time, hours and cost before running"
    )
    add_experiment(p)
    p.add_argument(
        "--gpu",
        action="append",
        help="a GPU to judge fit and time on (repeatable): A100-80GB, H100, L40S, RTX-4090, "
        "... or NAME:GIB; default: resources.train.gpu_model and 24/48/80 GB classes",
    )
    p.add_argument("--json", action="store_true", help="everything, as JSON")
    p.set_defaults(func=cmd_estimate)

    p = command(
        "preflight",
        "train every distinct shape a few steps on its longest batches, here (or with --profile "
        "slurm, on each GPU class the experiment asks for): measured memory and speed beside "
        "the estimate",
    )
    add_experiment(p)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per shape")
    add_profile(p)
    p.set_defaults(func=cmd_preflight)

    p = command(
        "run",
        "run an experiment's matrix through Snakemake: prepare, train, evaluate, compare",
        epilog="arguments after -- go to snakemake, e.g. tunebench run EXP -- --dry-run",
    )
    add_experiment(p, nargs="?", default=DEFAULT_EXPERIMENT)
    add_profile(p)
    p.set_defaults(func=cmd_run)

    p = command(
        "report",
        "re-render a results folder's table, recommendation, charts and HTML report "
        "(unfinished folders too; nothing is retrained)",
    )
    p.add_argument("results", help="a results folder (results/NAME) or its experiment file")
    p.add_argument(
        "--experiment",
        help="the experiment file, for a folder without experiment.json (written when the "
        "workflow compiles its table); default: RESULTS/experiment.json",
    )
    p.add_argument("--out", help="where to write; default: the results folder")
    p.add_argument(
        "--partial", action="store_true", help="name the outputs comparison_partial* (unfinished)"
    )
    p.set_defaults(func=cmd_report)

    p = command(
        "reproduce",
        "run a published comparison (a preset under experiments/reproduce/) and put the "
        "published numbers beside the reproduced ones",
        epilog="arguments after -- go to snakemake, e.g. tunebench reproduce NAME -- --dry-run",
    )
    p.add_argument("preset", nargs="?", help="a preset's name (see --list) or its file")
    p.add_argument(
        "--list", action="store_true", help="the presets, what they need and what they published"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resources",
        action="store_true",
        help="the published architecture with random weights: memory and speed, no download",
    )
    mode.add_argument(
        "--rehearse",
        action="store_true",
        help="a tiny model of the same family on the fixtures: the whole pipeline on a CPU",
    )
    p.add_argument("--steps", type=int, default=100, help="optimizer steps in --resources mode")
    p.add_argument("--gpu", help="with --list: the GPU to estimate for; default: the published one")
    add_profile(p)
    p.set_defaults(func=cmd_reproduce)

    p = command("export", "merge a finished run, convert it to GGUF (+ Ollama Modelfile), check it")
    add_experiment(p)
    p.add_argument("--run", required=True, help="the run id (tunebench plan lists them)")
    p.add_argument("--types", default="f16,q8_0", help="GGUF types, comma-separated")
    p.add_argument("--out", help="where to write; default: results/NAME/exports/runs/RUN")
    p.add_argument(
        "--no-check", action="store_true", help="skip comparing the GGUF files with the model"
    )
    p.set_defaults(func=cmd_export)

    p = command("schema", "print (or write) the experiment file's JSON schema")
    p.add_argument("--out", help="write to this file; default: print")
    p.add_argument(
        "--markdown", action="store_true", help="the reference of every key, as Markdown"
    )
    p.set_defaults(func=cmd_schema)

    from tunebench import stages, status
    from tunebench.envs import cli as envs_cli

    stages.add_parsers(sub)
    status.add_parsers(sub, HelpFormatter)
    envs_cli.add_parsers(sub, HelpFormatter)
    return parser


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunebench")
    except PackageNotFoundError:  # run from a checkout on PYTHONPATH (benchmarks/gpu_check.py)
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    from tunebench import noise

    noise.quiet_known_noise()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if extra and args.command not in PASSES_TO_SNAKEMAKE:
        # Dropping them silently would run something other than what was asked.
        parser.error(
            f"{args.command} does not take arguments after -- (only run and reproduce pass "
            f"them to snakemake): {' '.join(extra)}"
        )
    args.snakemake = extra
    try:
        return args.func(args) or 0
    except ExperimentError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
