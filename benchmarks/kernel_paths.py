"""Which conclusions of an experiment survive a change of CPU kernels: run it twice on this
machine, once with its native vector instructions and once with PyTorch, oneDNN and MKL held
to the next narrower ones (AVX512 -> AVX2, AVX2 -> none), and compare every pair of rows.

    python benchmarks/kernel_paths.py [experiments/smoke.yaml]

Machines of this project differ this way (Intel/AMD with AVX512-BF16, AMD with AVX2 only), and
each is deterministic on its own: the same experiment gives different numbers on each. Holding
this machine to AVX2 reproduces the AVX2 machine's figures (the old default's tiny-m full
fine-tuning: 0.555 exact match there and here with AVX2 kernels, 0.35 with AVX512). A
conclusion worth stating holds on both paths.

Writes benchmarks/figures/kernel_paths-<experiment>.md and .csv: both tables side by side, and
for each metric every pair of rows of one model whose order flips between the paths.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "benchmarks" / "figures"
# The environment that holds each library's kernels to a narrower instruction set: torch's
# ATEN_CPU_CAPABILITY, oneDNN's ONEDNN_MAX_CPU_ISA and MKL's MKL_ENABLE_INSTRUCTIONS, each in
# its own spelling (MKL has no SSE41: its narrowest is SSE4_2).
NARROWER = {
    "AVX512-BF16": ("avx2", "AVX2", "AVX2"),
    "AVX512": ("avx2", "AVX2", "AVX2"),
    "AVX2": ("default", "SSE41", "SSE4_2"),
}
METRICS = ("exact_match", "test_loss")
# Scored too where the experiment's data has preference pairs (the default does).
PREFERENCE = ("preference_accuracy",)


def run(experiment: Path, workdir: Path, env: dict) -> tuple[pd.DataFrame, float]:
    shutil.copy(experiment, workdir / experiment.name)
    data = workdir / "experiments" / "data"
    if not data.exists():  # the experiment's relative data paths, inside the scratch project
        shutil.copytree(REPO / "experiments" / "data", data)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tunebench", "run", experiment.name],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    name = yaml.safe_load(experiment.read_text())["name"]
    table = workdir / "results" / name / "comparison.csv"
    if not table.is_file():
        raise SystemExit(f"{workdir}: no table\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return pd.read_csv(table), seconds


def flips(native: pd.DataFrame, narrow: pd.DataFrame, metric: str) -> list[str]:
    """Pairs of rows of one model whose order on `metric` differs between the two paths."""
    both = native.merge(narrow, on="run_id", suffixes=("", "_narrow"))
    found = []
    for _, group in both.groupby("model"):
        for a, b in itertools.combinations(group.itertuples(), 2):
            first = getattr(a, metric) - getattr(b, metric)
            second = getattr(a, f"{metric}_narrow") - getattr(b, f"{metric}_narrow")
            if first * second < 0 or (first == 0) != (second == 0):
                found.append(
                    f"{a.run_id} vs {b.run_id}: {first:+.3f} native, {second:+.3f} narrower"
                )
    return found


def shown(experiment: Path) -> str:
    """The experiment as the figure names it: relative to the repository (a file outside it by
    its name alone), so a committed figure carries no machine's checkout path."""
    path = experiment.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def narrower_env(env: dict) -> tuple[dict, str]:
    """`env` with PyTorch, oneDNN and MKL held to the next narrower instruction set than this
    machine's, and the settings as a line (retention_cost.py --kernels narrower uses it too)."""
    from tunebench.measure import cpu_isa

    isa = cpu_isa()
    if isa not in NARROWER:
        raise SystemExit(f"no narrower kernels known for {isa}")
    aten, onednn, mkl = NARROWER[isa]
    held = {"ATEN_CPU_CAPABILITY": aten, "ONEDNN_MAX_CPU_ISA": onednn}
    held["MKL_ENABLE_INSTRUCTIONS"] = mkl
    return env | held, ", ".join(f"{k}={v}" for k, v in held.items())


def main() -> None:
    from tunebench.measure import cpu_isa, measured_on

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("experiment", type=Path, nargs="?", default=REPO / "experiments/smoke.yaml")
    args = parser.parse_args()
    isa = cpu_isa()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    narrow_env, held = narrower_env(env)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "native").mkdir()
        (Path(tmp) / "narrow").mkdir()
        native, native_seconds = run(args.experiment.resolve(), Path(tmp) / "native", env)
        narrow, narrow_seconds = run(args.experiment.resolve(), Path(tmp) / "narrow", narrow_env)
    metrics = [*METRICS, *(m for m in PREFERENCE if m in native and m in narrow)]
    columns = ["run_id", "model", *metrics]
    side = native[columns].merge(narrow[columns], on=["run_id", "model"], suffixes=("", "_narrow"))
    for metric in metrics:
        side[f"{metric}_change"] = side[f"{metric}_narrow"] - side[metric]
    stem = FIGURES / f"kernel_paths-{args.experiment.stem}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    side.to_csv(stem.with_suffix(".csv"), index=False)
    text = [
        f"# Kernel paths: {shown(args.experiment)}",
        "",
        f"measured {measured_on()}; native kernels ({isa}), then {held}",
        f"wall time: {native_seconds:.0f} s native, {narrow_seconds:.0f} s narrower",
        "",
        side.round(3).to_markdown(index=False),
    ]
    for metric in metrics:
        flipped = flips(native, narrow, metric)
        text += ["", f"## Pairs of one model whose {metric} order flips ({len(flipped)})", ""]
        text += [f"- {line}" for line in flipped] or ["none"]
    stem.with_suffix(".md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
