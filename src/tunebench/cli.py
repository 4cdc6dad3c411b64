"""`tunebench validate|plan|run|export|schema|env|stage`: parse the command line, call the
library."""

from __future__ import annotations

import argparse
import json
import sys

from tunebench.experiment import ExperimentError, load_experiment

DEFAULT_EXPERIMENT = "experiments/smoke.yaml"
EXIT_INVALID = 2


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
    return 0


def cmd_estimate(args) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from tunebench.estimate.runs import estimate_experiment, experiment_gpus
    from tunebench.matrix import expand

    exp = load_experiment(args.experiment)
    runs = expand(exp)
    try:
        gpus = experiment_gpus(exp, args.gpu)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return EXIT_INVALID
    records = estimate_experiment(exp, runs, gpus)
    if args.json:
        print(json.dumps({"experiment": exp.name, "runs": records}, indent=1))
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
    return 0


def _maybe(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def cmd_report(args) -> int:
    """Re-render the table, recommendation, charts and HTML report of a results folder."""
    from pathlib import Path

    from tunebench.reporting.report import EXPERIMENT_RECORD, compile_comparison

    root = Path(args.results)
    if args.experiment:
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
    if args.output:
        with open(args.output, "w") as f:
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
    from tunebench.export import run as export

    exp = load_experiment(args.experiment)
    root = layout.results_root(exp.name)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    out = Path(args.out) if args.out else root / layout.EXPORT.format(run_id=args.run)
    try:
        manifest = export.export_run(
            layout.run_dir(root, args.run), out=out, types=types, check=not args.no_check
        )
    except export.ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(export.describe_export(manifest, out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check an experiment file; print the number of runs")
    p.add_argument("experiment")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser(
        "plan", help="list the runs an experiment expands to, with predicted memory and time"
    )
    p.add_argument("experiment")
    p.add_argument("--gpu", action="append", help="the GPU to predict for (see estimate)")
    p.add_argument(
        "--no-estimate", action="store_true", help="list runs only (no torch import, faster)"
    )
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser(
        "estimate",
        help="predict every run's peak GPU memory, step time, hours and cost before running",
    )
    p.add_argument("experiment")
    p.add_argument(
        "--gpu",
        action="append",
        help="a GPU to judge fit and time on (repeatable): A100-80GB, H100, L40S, RTX-4090, "
        "... or NAME:GIB; default: resources.train.gpu_model and 24/48/80 GB classes",
    )
    p.add_argument("--json", action="store_true", help="everything, as JSON")
    p.set_defaults(func=cmd_estimate)
    p = sub.add_parser(
        "report",
        help="re-render a results folder's table, recommendation, charts and HTML report "
        "(partial folders too; nothing is retrained)",
    )
    p.add_argument("results", help="e.g. results/smoke")
    p.add_argument("--experiment", help="the experiment file (default: RESULTS/experiment.json)")
    p.add_argument("--out", help="where to write (default: RESULTS)")
    p.add_argument(
        "--partial", action="store_true", help="name the outputs comparison_partial* (unfinished)"
    )
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("schema", help="print (or write) the experiment JSON schema")
    p.add_argument("--output")
    p.add_argument(
        "--markdown", action="store_true", help="the reference of every key, as Markdown"
    )
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser(
        "run",
        help="run an experiment through Snakemake",
        epilog="arguments after -- go to snakemake, e.g. -- --dry-run",
    )
    p.add_argument("experiment", nargs="?", default=DEFAULT_EXPERIMENT)
    p.add_argument("--profile", help="a profile under workflow/profiles/ (e.g. slurm) or a folder")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "reproduce",
        help="run a published comparison (a preset under experiments/reproduce/) and put the "
        "published numbers beside the reproduced ones",
        epilog="arguments after -- go to snakemake, e.g. -- --dry-run",
    )
    p.add_argument("preset", nargs="?", help="a preset's name (see --list) or file")
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
    p.add_argument(
        "--steps", type=int, default=100, help="optimizer steps in --resources mode (default 100)"
    )
    p.add_argument("--gpu", help="--list: the GPU to estimate for (default: the published one)")
    p.add_argument("--profile", help="a profile under workflow/profiles/ (e.g. slurm) or a folder")
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser(
        "export",
        help="merge a finished run, convert it to GGUF (+ Ollama Modelfile) and check it",
    )
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    p.add_argument("--run", required=True, help="the run id (tunebench plan lists them)")
    p.add_argument("--types", default="f16,q8_0", help="GGUF types, comma-separated")
    p.add_argument("--out", help="default: results/<experiment>/exports/<run id>")
    p.add_argument(
        "--no-check", action="store_true", help="skip comparing the GGUF files with the model"
    )
    p.set_defaults(func=cmd_export)
    from tunebench import stages
    from tunebench.envs import cli as envs_cli

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
