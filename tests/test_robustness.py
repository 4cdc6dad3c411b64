"""Nothing lost, nothing silently wrong: resume after SIGKILL, failures as results, determinism,
secrets kept out of results."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import METHODS, run_for, start_run, train, train_command

from tunebench.io import read_json

BIN = Path(sys.executable).parent


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_the_same(
    tiny_model, tiny_data, tmp_path
):
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["lora"], max_steps=200, save_steps=20, logging_steps=10)
    whole = train(run, model_dir, tokenized, tmp_path / "whole")
    assert whole["status"] == "ok" and whole["resumed_from_step"] is None

    killed = tmp_path / "killed"
    command = train_command(run, model_dir, tokenized, killed, "--threads", "1")
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    first_checkpoint = killed / "checkpoints" / "checkpoint-20" / "trainer_state.json"
    while not first_checkpoint.is_file() and time.time() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert first_checkpoint.is_file()
    assert not (killed / "result.json").exists(), "killed before finishing: no result may exist"

    resumed = train(run, model_dir, tokenized, killed)
    assert resumed["status"] == "ok"
    assert resumed["resumed_from_step"] >= 20 and resumed["steps"] == 200
    assert not (killed / "checkpoints").exists(), "finished: its checkpoints are dropped"
    # Optimizer, LR schedule, RNG and data order were restored: the same final loss.
    assert resumed["train_loss_last"] == pytest.approx(whole["train_loss_last"], rel=1e-4)
    assert resumed["validation_loss"] == pytest.approx(whole["validation_loss"], rel=1e-4)
    # Throughput spans both segments: the resumed segment alone would overstate tokens/s.
    assert resumed["train_tokens"] == whole["train_tokens"]
    assert whole["train_seconds_before_resume"] == 0
    before = resumed["train_seconds_before_resume"]
    assert 0 < before < resumed["train_seconds"]
    segment_only = resumed["train_tokens"] / (resumed["train_seconds"] - before)
    assert resumed["tokens_per_second"] < segment_only
    assert resumed["tokens_per_second"] == pytest.approx(whole["tokens_per_second"], rel=0.5)


def test_same_seed_same_losses_on_cpu(tiny_model, tiny_data, tmp_path):
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["lora"], max_steps=10, logging_steps=2)
    first = train(run, model_dir, tokenized, tmp_path / "a")
    second = train(run, model_dir, tokenized, tmp_path / "b")
    losses = [[h["loss"] for h in r["log_history"] if "loss" in h] for r in (first, second)]
    assert losses[0] == losses[1] and len(losses[0]) == 5


def test_memory_ceiling_makes_an_oom_row(tiny_model, tiny_data, tmp_path):
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    result = train(
        run_for(METHODS["lora"], max_steps=5), model_dir, tokenized, tmp_path, memory_limit_mb=50
    )
    assert result["status"] == "oom"
    assert "exceeds resources.memory_limit_gb 0.05" in result["reason"]
    assert read_json(tmp_path / "result.json")["status"] == "oom"


def test_non_finite_loss_stops_the_run(tiny_model, tiny_data, tmp_path):
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["full"], max_steps=50, logging_steps=1)
    run = run.model_copy(update={"learning_rate": 1e30})  # past what validation allows
    result = train(run, model_dir, tokenized, tmp_path)
    assert result["status"] == "failed"
    assert result["reason"].startswith("non-finite")
    logged = read_json(tmp_path / "result.json")
    assert logged["status"] == "failed" and "at step" in logged["reason"]


def test_an_exception_inside_the_training_loop_is_a_row(tiny_model, tiny_data, tmp_path):
    """A token id beyond the vocabulary fails inside the forward pass of a training step."""
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    broken = tmp_path / "tokenized"
    shutil.copytree(tokenized, broken)
    table = pq.read_table(broken / "train.parquet").to_pydict()
    table["input_ids"] = [[10**6] * len(ids) for ids in table["input_ids"]]
    import pyarrow as pa

    pq.write_table(pa.table(table), broken / "train.parquet")
    result = train(run_for(METHODS["lora"], max_steps=5), model_dir, broken, tmp_path / "run")
    assert result["status"] == "failed"
    assert "IndexError" in result["reason"] or "index" in result["reason"].lower()


def test_secrets_in_messages_are_redacted(tiny_model, tiny_data, tmp_path, monkeypatch):
    """A secret that reaches an error message (here: a model path) is masked in the result."""
    secret = "hf_FAKEtoken0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    from tunebench.spec import ModelSpec

    run = run_for(METHODS["lora"], max_steps=2)
    run = run.model_copy(update={"model": ModelSpec(name="m", path=f"models/{secret}")})
    _, _, tokenized = tiny_data
    result = train(run, None, tokenized, tmp_path)
    assert result["status"] == "missing_model"
    text = (tmp_path / "result.json").read_text()
    assert secret not in text and "models/***" in text


@pytest.mark.slow
def test_a_workflow_caught_mid_training_shows_its_progress_and_refuses_a_second_run(tmp_path):
    """While a run trains: `tunebench status` from another shell shows it at its step,
    `tunebench run` without a terminal prints plain progress lines, and a second `tunebench
    run` in the same directory exits non-zero with a clear message (Snakemake's lock)."""
    import json
    import re

    import yaml
    from conftest import tiny_experiment

    from tunebench.experiment import validate_data
    from tunebench.matrix import expand

    exp = tiny_experiment(methods=[METHODS["lora"]])
    exp["training"]["max_steps"] = 100_000  # keeps the first run busy training
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    (run,) = expand(validate_data(exp))
    progress = tmp_path / "results" / "tiny" / "runs" / run.run_id / "train" / "progress.json"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TUNEBENCH_PROGRESS_EVERY": "1"}
    first = start_run(tmp_path, 1, tmp_path / "run.log", TUNEBENCH_PROGRESS_EVERY="1")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            if progress.is_file() and json.loads(progress.read_text())["step"] > 0:
                break
            time.sleep(0.5)
        output = (tmp_path / "run.log").read_text()
        assert progress.is_file(), output[-3000:]

        shown = subprocess.run(
            [str(BIN / "tunebench"), "status", "exp.yaml"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shown.returncode == 0, shown.stderr[-3000:]
        assert "tiny: 0 of 1 runs done, 1 running" in shown.stdout, shown.stdout
        assert re.search(r"Snakemake: \d+ of \d+ steps", shown.stdout), shown.stdout
        row = next(line for line in shown.stdout.splitlines() if run.run_id in line)
        step = int(re.search(r"training\s+(\d+)/100000\b", row).group(1))
        assert step > 0 and step <= json.loads(progress.read_text())["step"]

        second = subprocess.run(
            [str(BIN / "tunebench"), "run", "exp.yaml"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        assert "another tunebench run" in second.stdout + second.stderr
        assert first.poll() is None, "the first run must go on"
        # Without a terminal, the run's own output has plain progress lines among Snakemake's.
        deadline = time.time() + 30
        pattern = rf"{run.run_id}: training step \d+/100000, loss"
        while not re.search(pattern, output) and time.time() < deadline:
            time.sleep(0.5)
            output = (tmp_path / "run.log").read_text()
        assert re.search(pattern, output), output[-3000:]
    finally:
        # Snakemake waits for its running job on SIGTERM; the job here is long: kill it all.
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)


def test_a_checkpoint_cut_off_mid_save_is_not_resumed_from(tmp_path):
    from tunebench.training.train import last_complete_checkpoint

    for step, complete in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")
    assert not (tmp_path / "checkpoint-30").exists()
    assert len(list((tmp_path / "incomplete").iterdir())) == 1
    assert last_complete_checkpoint(tmp_path / "nothing-here") is None
