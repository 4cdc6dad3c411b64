"""Progress a person can follow: the progress file the train step rewrites, the snapshot of a
results folder read from any shell (hostile folders: half-written, stale, foreign and garbled
progress files, failed rows, queued Slurm jobs), its views, and the live view following a real
child process. `tunebench status` on a workflow caught mid-training is in test_robustness."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import METHODS, run_for, train
from rich.console import Console

from tunebench import layout, progress, status
from tunebench.cli import main


def test_the_train_step_leaves_a_progress_file_rank_zero_writes(tiny_model, tiny_data, tmp_path):
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["lora"], max_steps=8, logging_steps=2)
    result = train(run, model_dir, tokenized, tmp_path / "run")
    assert result["status"] == "ok"
    written = json.loads(layout.train_progress_in(tmp_path / "run").read_text())
    assert written["run_id"] == run.run_id and written["status"] == "finished"
    assert written["step"] == written["max_steps"] == 8
    assert written["loss"] == pytest.approx(result["train_loss_last"])
    assert written["tokens_per_second"] > 0 and written["seconds_per_step"] > 0
    assert written["eta_seconds"] == 0
    # The peak so far, kept where a job killed while saving still leaves it.
    assert written["memory_kind"] == result["memory_kind"] and written["peak_memory_gb"] > 0
    assert written["pid"] == os.getpid() and written["host"] == socket.gethostname()
    assert datetime.now(UTC) - datetime.fromisoformat(written["updated_at"]) < timedelta(hours=1)


def test_only_the_first_process_writes_and_a_bad_disk_does_not_stop_training(tmp_path):
    from transformers import TrainerState

    from tunebench.training.callbacks import ProgressFile

    path = tmp_path / "train" / "progress.json"
    other_rank = TrainerState(is_world_process_zero=False, max_steps=10)
    ProgressFile(path, "r").on_train_begin(None, other_rank, None)
    assert not path.exists()
    ProgressFile(path, "r").on_train_begin(None, TrainerState(max_steps=10), None)
    assert json.loads(path.read_text())["status"] == "training"
    path.unlink()
    path.mkdir()  # a directory where the file goes: writing fails, training goes on
    ProgressFile(path, "r").on_train_end(None, TrainerState(max_steps=10, global_step=10), None)


def a_dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def progress_of(run_id: str, step, **fields) -> dict:
    return {
        "run_id": run_id,
        "status": "training",
        "step": step,
        "max_steps": 20,
        "loss": 2.5,
        "tokens_per_second": 1234.5,
        "seconds_per_step": 0.5,
        "eta_seconds": (20 - step) * 0.5 if isinstance(step, int) else "soon",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    } | fields


@pytest.fixture
def folder(tmp_path) -> tuple[Path, list[str]]:
    """A workflow running in tmp_path with a run in every state a folder can show."""
    root = tmp_path / "results" / "exp"
    ids = {
        name: f"m-{name}-s0-0000"
        for name in ("done", "oom", "live", "dead", "half", "foreign", "old", "garbled")
        + ("evaluating", "trained", "queued", "pruned")
    }
    for name in ("done", "evaluating", "trained"):
        write(
            layout.train_result_in(layout.run_dir(root, ids[name])),
            {"status": "ok", "steps": 20, "train_loss_last": 1.25, "tokens_per_second": 2000.0},
        )
        write(
            root / layout.BENCHMARK.format(rule="train", name=ids[name]),
            "s\th:m:s\n30.0\t0:00:30\n",
        )
    write(root / layout.EVAL_RESULT.format(run_id=ids["done"]), {"status": "ok"})
    write(
        root / layout.BENCHMARK.format(rule="evaluate", name=ids["done"]),
        "s\th:m:s\n10.0\t0:00:10\n",
    )
    write(root / layout.LOG.format(rule="evaluate", name=ids["evaluating"]), "evaluating\n")
    # A search stopped one at its first rung (search/halving.py's decision file); a candidate
    # without run ids and a promoted one are not runs it pruned.
    write(
        root / layout.SEARCH_DECISION.format(rung=0),
        {"candidates": [{"decision": "promoted", "run_ids": [ids["queued"]]},
                        {"decision": "pruned"},
                        {"decision": "pruned", "run_ids": [ids["pruned"]]}]},
    )  # fmt: skip
    write(
        root / layout.RUNG_RESULT.format(run_id=ids["pruned"], step=4),
        {"status": "ok", "validation_loss": 2.0},
    )
    reason = "CUDA out of memory. " * 40
    write(
        layout.train_result_in(layout.run_dir(root, ids["oom"])),
        {"status": "oom", "reason": reason, "steps": "?"},
    )
    at = {
        name: layout.train_progress_in(layout.run_dir(root, run_id)) for name, run_id in ids.items()
    }
    write(at["live"], progress_of(ids["live"], 5))
    write(at["dead"], progress_of(ids["dead"], 7, pid=a_dead_pid()))
    write(at["half"], '{"run_id": "x", "step": 3, "max_st')
    write(at["foreign"], progress_of(ids["foreign"], 9, host="node042", pid=1))
    hours_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    write(at["old"], progress_of(ids["old"], 11, host="node042", updated_at=hours_ago))
    write(at["garbled"], progress_of(ids["garbled"], "ten", loss=float("nan"), pid="me"))
    workdir = tmp_path
    write(workdir / ".snakemake" / "locks" / "0.input.lock", "x")
    queued = workdir / ".snakemake" / "slurm_logs" / "rule_train" / ids["queued"] / "4711.log"
    write(
        workdir / ".snakemake" / "log" / "2026-01-01T000000.000000.snakemake.log",
        "3 of 30 steps (10%) done\n"
        f"Job 7 has been submitted with SLURM jobid 4711 (log: {queued}).\n"
        "5 of 30 steps (17%) done\n",
    )
    write(workdir / ".snakemake" / "slurm_logs" / "rule_train" / ids["live"] / "4700.log", "")
    return root, ids


def test_a_snapshot_reads_every_state_from_a_hostile_folder(folder):
    root, ids = folder
    shot = progress.take("exp", root, list(ids.values()), root.parents[1], slurm_states={})
    state = {name: next(r for r in shot.runs if r.run_id == ids[name]) for name in ids}
    assert {name: row.state for name, row in state.items()} == {
        "done": "done",
        "oom": "failed",
        "live": "training",  # this process writes it
        "dead": "stopped",  # its process is gone
        "half": "pending",  # cut off mid-write (not by io.write_json): as if absent
        "foreign": "training",  # another host, just updated
        "old": "stopped",  # another host, silent for two hours
        "garbled": "pending",
        "evaluating": "evaluating",
        "trained": "trained",
        "queued": "pending",
        "pruned": "pruned",
    }
    live = state["live"]
    assert (live.step, live.max_steps, live.loss, live.tokens_per_second) == (5, 20, 2.5, 1234.5)
    assert live.eta_seconds == pytest.approx(7.5, abs=2) and live.slurm_job == "4700"
    assert state["dead"].step == 7 and state["dead"].eta_seconds is None
    assert state["oom"].reason.startswith("oom: CUDA out of memory") and state["oom"].step is None
    assert state["queued"].slurm_job == "4711"  # submitted, no log file yet
    assert shot.counts() == {"done": 1, "running": 3, "failed": 1, "pending": 6, "pruned": 1}
    assert state["pruned"].reason == "pruned by the search at rung 0"
    assert status.summary(shot).split(";")[0].endswith("6 pending, 1 pruned by the search")
    assert shot.workflow_running and shot.snakemake_steps == "5 of 30 steps (17%) done"


def test_the_eta_scales_the_estimate_by_what_was_measured(folder):
    root, ids = folder
    predicted = dict.fromkeys(ids.values(), 60.0)
    shot = progress.take(
        "exp", root, list(ids.values()), root.parents[1], predicted, slurm_states={}
    )
    # Trained jobs took 30 s of a predicted 60: each of the 5 runs not started costs 30 s,
    # every run left (9) one evaluation of 10 s, the training ones their own ETA; 3 at a time.
    training = sum(r.eta_seconds for r in shot.runs if r.state == "training")
    assert shot.eta_seconds == pytest.approx((5 * 30 + 9 * 10 + training) / 3, rel=0.01)
    assert "3 trained and 1 evaluated runs" in shot.eta_basis
    assert "scaled by the estimator" in shot.eta_basis
    (root.parents[1] / ".snakemake" / "locks" / "0.input.lock").unlink()
    shot = progress.take(
        "exp", root, list(ids.values()), root.parents[1], predicted, slurm_states={}
    )
    assert shot.eta_seconds is None and not shot.workflow_running


def test_no_eta_before_anything_was_measured(tmp_path):
    (tmp_path / ".snakemake" / "locks").mkdir(parents=True)
    (tmp_path / ".snakemake" / "locks" / "0.input.lock").write_text("x")
    shot = progress.take("exp", tmp_path / "results" / "exp", ["a", "b"], tmp_path)
    assert shot.eta_seconds is None and "first run" in shot.eta_basis
    assert shot.counts()["pending"] == 2 and shot.snakemake_steps is None


def test_the_views_show_the_running_failed_and_stopped_runs(folder):
    root, ids = folder
    shot = progress.take("exp", root, list(ids.values()), root.parents[1], slurm_states={})
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(status.render(shot))
    text = console.export_text()
    assert text.startswith("exp: 1 of 12 runs done, 3 running, 1 failed, 6 pending, 1 pruned")
    assert "Snakemake: 5 of 30 steps (17%) done" in text
    for name in ("live", "dead", "oom", "foreign", "evaluating", "trained"):
        assert ids[name] in text, name
    for name in ("done", "half", "queued", "pruned"):  # nothing to look at: only with --all
        assert ids[name] not in text, name
    assert "5/20" in text and "1,234" in text and "4700" in text
    assert all(len(line) <= 160 for line in text.splitlines())
    lines = status.plain_lines(shot)
    assert "exp: 1 of 12 runs done" in lines[0]
    running = [line for line in lines[1:] if ids["live"] in line]
    assert running and "step 5/20" in running[0] and "loss 2.5" in running[0]
    assert len(lines) == 1 + 3  # one line per running run


def test_status_from_a_results_folder_without_its_experiment(folder, capsys, monkeypatch):
    root, ids = folder
    monkeypatch.setenv("PATH", "")  # no sacct here either way: the command must not need it
    assert main(["status", str(root), "--all", "--no-estimate"]) == 0
    out = capsys.readouterr().out
    assert "runs found in the folder" in out
    # Every run with a folder; the queued one has none yet: only the experiment names it.
    assert [name for name, run_id in ids.items() if run_id not in out] == ["queued"]


def test_the_live_view_keeps_the_child_s_output_above_it(tmp_path):
    """A real child process, a terminal console: every line the child prints reaches the
    screen, and the view is drawn below."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfor i in range(3):\n print('line', i, flush=True); time.sleep(0.3)",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    source = status.Source("exp", tmp_path / "results" / "exp", ["a-run"], tmp_path)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    assert status.follow_live(child, source, console, every=0.2) == 0
    shown = screen.getvalue()
    assert all(f"line {i}" in shown for i in range(3))
    assert "exp: 0 of 1 runs done" in shown and "Snakemake has finished (exit status 0)" in shown


def test_plain_lines_come_every_so_often_without_a_terminal(tmp_path, capsys):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.2)"])
    source = status.Source("exp", tmp_path / "results" / "exp", ["a-run"], tmp_path)
    assert status.follow_plain(child, source, every=0.5) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "exp: 0 of 1 runs" in line]
    assert 1 <= len(lines) <= 3
