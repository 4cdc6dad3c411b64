"""The matrix on a real Slurm cluster on this machine (scripts/local-slurm.sh): jobs go through
snakemake-executor-plugin-slurm, GPU requests hit a fake GPU gres, a training job cancelled with
scancel mid-run resumes from its checkpoint when the workflow is run again while a two-GPU job
of the same matrix trains in two processes, and a run spanning two nodes (two slurmd daemons)
trains across them. Each workflow here costs about two minutes, mostly the plugin's status
checks (their interval grows by 10 s while no job finishes): a behaviour joins an existing
workflow where it can rather than starting its own."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, tiny_experiment

BIN = Path(sys.executable).parent
SCRIPT = REPO / "scripts" / "local-slurm.sh"
HAVE_SLURM = shutil.which("slurmctld") is not None and os.geteuid() == 0
if not HAVE_SLURM and os.environ.get("CI"):
    raise RuntimeError("CI must run the Slurm test: .ci/run installs slurm-wlm (as root)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not HAVE_SLURM,
        reason="needs root and Debian's slurm-wlm: sudo scripts/local-slurm.sh install",
    ),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm-state")
    env = {**os.environ, "TUNEBENCH_SLURM_STATE": str(state)}
    subprocess.run([str(SCRIPT), "start"], env=env, check=True, timeout=180)
    pids = {p.stem: int(p.read_text()) for p in (state / "run").glob("*.pid")}
    assert {"munged", "mariadbd", "slurmdbd", "slurmctld"} <= set(pids)
    assert sum(name.startswith("slurmd-") for name in pids) == 3  # main's node, twonodes' two
    yield state
    subprocess.run([str(SCRIPT), "stop"], env=env, check=True, timeout=180)
    for name, pid in pids.items():  # exactly the daemons it started are gone
        assert not Path(f"/proc/{pid}").exists(), f"{name} ({pid}) still running"


def tunebench_slurm(workdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(
        [
            str(BIN / "tunebench"),
            "run",
            "exp.yaml",
            "--profile",
            "slurm",
            "--",
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--slurm-no-account",
            "--jobs",
            "4",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def job_of(comment: str) -> str | None:
    out = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        job, _, job_comment = line.partition(" ")
        if job_comment.strip() == comment:
            return job
    return None


def sacct(fields: str) -> str:
    """The last hour's jobs (allocations, not steps), `|`-separated `fields`."""
    return subprocess.run(
        ["sacct", "-n", "-X", "-P", "-S", "now-1hour", "-o", fields],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def cancel_when_checkpointed(
    run_dir: Path,
    run_id: str,
    cancelled: list,
    step: int = 25,
    rule: str = "train",
    shown: list | None = None,
) -> None:
    """scancel the run's training job as soon as its first checkpoint is complete; before,
    `tunebench status` from another shell (as on a login node) into `shown`."""
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    deadline = time.time() + 600
    while time.time() < deadline and not checkpoint.is_file():
        time.sleep(0.1)
    job = job_of(f"rule_{rule}_wildcards_{run_id}")
    if job and checkpoint.is_file():
        if shown is not None:
            status = subprocess.run(
                [str(BIN / "tunebench"), "status", "exp.yaml", "--no-estimate"],
                cwd=run_dir.parents[3],  # the workflow's directory: results/<name>/runs/<run>
                capture_output=True,
                text=True,
                timeout=120,
            )
            shown.append(status.stdout + status.stderr)
        out = subprocess.run(["scancel", job], capture_output=True, text=True)
        cancelled.append((job, out.returncode, out.stderr.strip()))


def test_the_matrix_runs_on_slurm_and_a_cancelled_job_resumes(cluster, tmp_path):
    exp = tiny_experiment(
        methods=[
            {"method": "full", "learning_rate": 2e-3},
            {"method": "lora", "ranks": [4], "learning_rate": 5e-3},
        ]
    )
    exp["training"].update(max_steps=400, save_steps=25)
    exp["resources"] = {
        "train": {"gpus": 1, "gpu_model": "fake", "mem_gb": 2, "runtime_minutes": 20},
        "evaluate": {"mem_gb": 2, "runtime_minutes": 20},
        "default": {"mem_gb": 2, "runtime_minutes": 20},
        # One Slurm task holding both (fake) GPUs: the train step starts one process per GPU
        # inside it (gloo here: the GPUs are fake). The node has two, so it runs alone.
        "overrides": [{"match": {"method": "full"}, "train": {"gpus": 2, "mem_gb": 3}}],
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    from tunebench.experiment import validate_data
    from tunebench.matrix import expand

    runs = {r.method: r.run_id for r in expand(validate_data(exp))}
    root = tmp_path / "results" / "tiny"
    cancelled: list[str] = []
    shown: list[str] = []
    watcher = threading.Thread(
        target=cancel_when_checkpointed,
        args=(root / "runs" / runs["lora"], runs["lora"], cancelled),
        kwargs={"shown": shown},
    )
    watcher.start()
    first = tunebench_slurm(tmp_path)
    watcher.join()
    assert cancelled, first.stdout[-3000:] + first.stderr[-3000:]
    job, code, message = cancelled[0]
    assert code == 0, message
    # Caught mid-training, from another shell: the run at its step, with its Slurm job.
    row = next((line for line in shown[0].splitlines() if runs["lora"] in line), "")
    assert re.search(rf"training\s+\d+/400\b.*\b{job} RUNNING\b", row), shown[0]
    assert first.returncode != 0
    assert not (root / "comparison.csv").exists()
    table = pd.read_csv(root / "comparison_partial.csv")
    lora = table[table["run_id"] == runs["lora"]].iloc[0]
    assert lora["status"] == "missing" and "CANCELLED" in lora["reason"], lora["reason"]
    assert table[table["run_id"] == runs["full"]].iloc[0]["status"] == "ok"

    # The training jobs ran as Slurm jobs, asking for the (fake) GPU and their memory.
    accounting = sacct("JobID,Comment,State,AllocTRES,ReqMem")
    train_jobs = [
        line.split("|") for line in accounting.splitlines() if "rule_train_wildcards_" in line
    ]
    assert len(train_jobs) == 2
    gres = {job[1].removeprefix("rule_train_wildcards_"): job[3] for job in train_jobs}
    assert "gres/gpu=2" in gres[runs["full"]] and "gres/gpu=1" in gres[runs["lora"]], gres
    assert {job[4] for job in train_jobs} == {"2G", "3G"}  # the override gave full 3 GB
    full = json.loads((root / "runs" / runs["full"] / "train" / "result.json").read_text())
    assert full["world_size"] == 2 and len(full["peak_memory_gb_per_rank"]) == 2

    second = tunebench_slurm(tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    resumed = json.loads((root / "runs" / runs["lora"] / "train" / "result.json").read_text())
    assert resumed["status"] == "ok" and resumed["resumed_from_step"] >= 25
    table = pd.read_csv(root / "comparison.csv")
    assert set(table["status"]) == {"ok"}
    assert not (root / "comparison_partial.csv").exists()
    logs = root / "runs" / runs["lora"] / "slurm_logs" / "train"
    assert job in {p.stem for p in logs.glob("*.log")}


def test_a_run_spanning_two_nodes_trains_across_them(cluster, tmp_path):
    """resources.train.nodes: 2 on partition `twonodes` (two slurmd daemons): one Slurm job,
    one task per node started by srun, a (fake) GPU per node as gres; the two workers shard the
    run with FSDP after meeting at the rendezvous on the first node. (Cancel and resume are
    tested on one node above, and FSDP's sharded checkpoints resume in test_distributed.py:
    this test keeps to what only two nodes show, to stay short.)"""
    exp = tiny_experiment(methods=[{"method": "lora", "ranks": [4], "learning_rate": 5e-3}])
    exp["training"].update(max_steps=30)
    exp["resources"] = {
        "partition": "twonodes",
        "train": {"gpus": 2, "nodes": 2, "gpu_model": "fake", "mem_gb": 2, "runtime_minutes": 20},
        "evaluate": {"mem_gb": 2, "runtime_minutes": 20},
        "default": {"mem_gb": 2, "runtime_minutes": 20},
        "distributed": {"strategy": "fsdp"},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    from tunebench.experiment import validate_data
    from tunebench.matrix import expand

    (run,) = expand(validate_data(exp))
    run_dir = tmp_path / "results" / "tiny" / "runs" / run.run_id
    out = tunebench_slurm(tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trained = json.loads((run_dir / "train" / "result.json").read_text())
    assert trained["status"] == "ok", trained["reason"]
    assert trained["world_size"] == 2 and trained["strategy"] == "fsdp"
    assert trained["steps"] == 30
    table = pd.read_csv(tmp_path / "results" / "tiny" / "comparison.csv")
    row = table[table["run_id"] == run.run_id].iloc[0]
    assert row["world_size"] == 2 and row["strategy"] == "fsdp"
    assert row["peak_memory_gb"] == max(trained["peak_memory_gb_per_rank"])
    # CPU processes on two machines: both machines' hours are billed.
    assert trained["accelerator_hours"] == pytest.approx(2 * trained["train_seconds"] / 3600)
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    assert sorted(trained["node_per_rank"]) == [f"{host}-1", f"{host}-2"]
    accounting = sacct("Comment,NNodes,AllocTRES")
    jobs = [
        line.split("|")
        for line in accounting.splitlines()
        if "rule_train_across_nodes_wildcards_" in line and trained["run_id"] in line
    ]
    assert len(jobs) == 1
    assert all(nodes == "2" and "gres/gpu=2" in tres for _, nodes, tres in jobs)


def test_bare_snakemake_runs_a_search_on_slurm(cluster, tmp_path):
    """A small successive-halving search (one method, three learning rates, rungs at steps 4
    and 8, a budget for one to go on) from bare `snakemake --profile workflow/profiles/slurm`:
    every rung is a Slurm job on the (fake) GPU, the promotion decision is a checkpoint between
    them, and the table has the pruned rows beside the one trained to the end."""
    from test_search_halving import LR_RANGE, searching

    from tunebench import layout
    from tunebench.experiment import validate_data
    from tunebench.matrix import expand

    exp = searching(
        {"steps": 16}, methods=[{"method": "lora", "ranks": [4], "learning_rate": LR_RANGE}]
    )
    exp["evaluation"] = {"max_new_tokens": 4, "max_examples": 8}
    exp["resources"] = {
        "train": {"gpus": 1, "gpu_model": "fake", "mem_gb": 2, "runtime_minutes": 20},
        "evaluate": {"mem_gb": 2, "runtime_minutes": 20},
        "default": {"mem_gb": 2, "runtime_minutes": 20},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    runs = {r.run_id for r in expand(validate_data(exp))}
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = subprocess.run(
        [
            str(BIN / "snakemake"),
            "--snakefile",
            str(REPO / "workflow" / "Snakefile"),
            "--configfile",
            "exp.yaml",
            "--profile",
            str(REPO / "workflow" / "profiles" / "slurm"),
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--slurm-no-account",
            "--jobs",
            "4",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results" / "tiny" / "comparison.csv").set_index("run_id")
    assert runs <= set(table.index)  # beside the untuned model's row
    table = table.loc[sorted(runs)]
    assert sorted(table["status"]) == ["ok", "pruned", "pruned"]
    assert (table.loc[table["status"] == "pruned", "stopped_at_step"] == 4).all()
    # Every rung trained as its own Slurm job on the fake GPU: the three candidates to step 4,
    # then the promoted one on to the end from its rung checkpoint.
    accounting = sacct("Comment,State,AllocTRES")

    def jobs(rule: str) -> list[list[str]]:
        return [
            line.split("|")
            for line in accounting.splitlines()
            if f"rule_{rule}_wildcards_" in line and any(r in line for r in runs)
        ]

    assert len(jobs("train_rung")) == 3 and len(jobs("train")) == 1, accounting
    assert all(
        s == "COMPLETED" and "gres/gpu=1" in t for _, s, t in jobs("train_rung") + jobs("train")
    )
    (best,) = table.index[table["status"] == "ok"]
    finished = tmp_path / "results" / "tiny" / layout.TRAIN_RESULT.format(run_id=best)
    assert json.loads(finished.read_text())["resumed_from_step"] == 4


def test_a_preflight_runs_one_short_job_per_gpu_class_on_slurm(cluster, tmp_path):
    """`tunebench preflight --profile slurm`: a class the cluster lacks is an error naming its
    key before anything is submitted; the class it has gets one short Slurm job per shape on
    that GPU, reported under its class."""
    exp = tiny_experiment(methods=[{"method": "lora", "ranks": [4], "learning_rate": 5e-3}])
    exp["resources"] = {
        "train": {"gpus": 1, "gpu_model": "fake", "mem_gb": 2, "runtime_minutes": 10},
        "default": {"mem_gb": 2, "runtime_minutes": 10},
        "overrides": [{"match": {"method": "lora"}, "train": {"gpu_model": "h100"}}],
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    command = [str(BIN / "tunebench"), "preflight", "exp.yaml", "--steps", "2"]
    command += ["--profile", "slurm"]

    def preflight() -> subprocess.CompletedProcess:
        return subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )

    unknown = preflight()
    assert unknown.returncode == 2, unknown.stdout[-2000:] + unknown.stderr[-2000:]
    assert "resources.overrides[0].train.gpu_model" in unknown.stderr
    assert "'h100'" in unknown.stderr and "fake" in unknown.stderr
    assert not (tmp_path / "results").exists(), "nothing was made or submitted"

    del exp["resources"]["overrides"]
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    done = preflight()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "results/tiny/preflight/preflight.json").read_text())
    assert [c["gpu_class"] for c in report["classes"]] == ["fake"]
    (shape,) = report["shapes"]
    assert shape["status"] == "ok" and shape["gpu_class"] == "fake", shape
    jobs = [
        line.split("|")
        for line in sacct("Comment,State,AllocTRES").splitlines()
        if f"rule_train_wildcards_{shape['run_id']}" in line
    ]
    assert len(jobs) == 1 and all(s == "COMPLETED" and "gres/gpu=1" in t for _, s, t in jobs)


def test_cancelled_states_are_normalised_for_the_plugin():
    """The plugin compares states exactly; "CANCELLED by 0" must read as "CANCELLED"."""
    import asyncio

    pytest.importorskip("snakemake_executor_plugin_slurm")
    import snakemake_executor_plugin_slurm as plugin

    from tunebench.slurm import normalise_cancelled_status

    original = plugin.query_job_status
    try:

        async def fake(command, logger):
            return {"6": "CANCELLED by 0", "7": "COMPLETED"}, 0.01

        plugin.query_job_status = fake
        assert normalise_cancelled_status()
        states, _ = asyncio.run(plugin.query_job_status("sacct ...", None))
        assert states == {"6": "CANCELLED", "7": "COMPLETED"}
    finally:
        plugin.query_job_status = original
