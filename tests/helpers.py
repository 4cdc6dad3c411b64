"""Helpers that several test modules share: the methods a tiny run trains with, a run of one
method, the train stage run in this process or as a command, and the tunebench command as a
user without the environment activated runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import tiny_experiment

from tunebench import stages
from tunebench.experiment import validate_data
from tunebench.matrix import expand
from tunebench.spec import Tracking

BIN = Path(sys.executable).parent


METHODS = {
    "full": {"method": "full", "learning_rate": 3e-3},
    "lora": {"method": "lora", "ranks": [8], "learning_rate": 1e-2},
    "dora": {"method": "dora", "ranks": [8], "learning_rate": 1e-2},
    "rslora": {"method": "rslora", "ranks": [8], "learning_rate": 1e-2},
    "qlora": {
        "method": "qlora",
        "ranks": [8],
        "learning_rate": 1e-2,
        "quantization": {"quant_type": "nf4", "compute_dtype": "float32"},
    },
}


def run_for(method: dict, **training):
    exp = tiny_experiment(methods=[method])
    exp["training"].update(training)
    (run,) = expand(validate_data(exp))
    return run


def train(
    run, model_dir, tokenized, run_dir: Path, tracking=None, threads: int = 1, **kwargs
) -> dict:
    """Run the train stage as the workflow does, in this process."""
    return stages.train(
        run=run,
        tokenized=tokenized,
        run_dir=run_dir,
        result=run_dir / "result.json",
        tracking=tracking or Tracking(),
        model_dir=model_dir,
        threads=threads,
        **kwargs,
    )


def path_without_the_environment() -> str:
    """PATH as a user has it who did not activate .venv (make and pytest add it)."""
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)


def tunebench(cwd: Path, *args: str, timeout: int = 600, env: dict | None = None):
    """`.venv/bin/tunebench ...` with the environment not activated: every job must still run
    this environment's tunebench."""
    env = {
        **os.environ,
        "PATH": path_without_the_environment(),
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    return subprocess.run(
        [str(BIN / "tunebench"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_command(run, model_dir, tokenized, run_dir: Path, *options: str) -> list[str]:
    """The train stage's command line, as the workflow runs it, for a process to kill."""
    return [
        str(BIN / "tunebench"),
        "stage",
        "train",
        "--run",
        run.model_dump_json(),
        f"--model-dir={model_dir}",
        "--tokenized",
        str(tokenized),
        "--run-dir",
        str(run_dir),
        "--result",
        str(run_dir / "result.json"),
        "--tracking",
        "{}",
        *options,
    ]


def start_run(cwd: Path, cores: int, log: Path, **env: str) -> subprocess.Popen:
    """`tunebench run exp.yaml` in the background, in a session of its own so that a test can
    kill it with all its jobs (os.killpg), its output into `log`."""
    environment = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env}
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(BIN / "tunebench"), "run", "exp.yaml", "--", "--cores", str(cores)],
            cwd=cwd,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
