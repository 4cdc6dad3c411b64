"""End to end: `tunebench run` drives real Snakemake jobs on a tiny experiment in a temp dir."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, tiny_experiment

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


# Fake secrets given to the end-to-end run; none may appear in any file it writes.
SECRETS = {
    "HF_TOKEN": "hf_FAKEfakeFAKE1234567890",
    "WANDB_API_KEY": "0123456789abcdef" * 2 + "fake",
    "MY_DATABASE_PASSWORD": "correct-horse-battery-staple",
}


def tunebench(cwd: Path, *args: str, timeout: int = 600, env: dict | None = None):
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
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


def snakemake_dry_run(cwd: Path, experiment: Path) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(experiment),
            "--dry-run",
            "--cores",
            "2",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count."""
    table = dry_run_output.split("Job stats:")[1] if "Job stats:" in dry_run_output else ""
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny matrix plus a model whose folder does not exist; run once for the module."""
    work = tmp_path_factory.mktemp("workflow")
    exp = tiny_experiment()
    exp["models"].append({"name": "ghost", "path": "models/not-there"})
    exp["tracking"] = {"wandb": True}
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(exp))
    secrets = {**SECRETS, "WANDB_MODE": "offline"}
    result = tunebench(work, "run", str(path), "--", "--cores", "2", env=secrets)
    return work, path, exp, result


def test_the_table_has_a_row_per_run_and_baseline(finished):
    work, _, _, result = finished
    table = pd.read_csv(work / "results" / "tiny" / "comparison.csv")
    assert (work / "results" / "tiny" / "comparison.md").is_file(), result.stderr[-3000:]
    assert (work / "results" / "tiny" / "plots" / "quality_vs_memory.png").stat().st_size > 1000
    assert len(table) == 2 + 4  # baselines of m and ghost, full + lora for each
    ok = table[table["model"] == "m"]
    assert set(ok["status"]) == {"ok"}, ok[["run_id", "status", "reason"]].to_string()
    base = ok[ok["method"] == "base"].iloc[0]
    for _, row in ok[ok["method"] != "base"].iterrows():
        # Fine-tuning on the task must beat the untuned model on held-out loss.
        assert row["test_loss"] < base["test_loss"] - 0.2, row["run_id"]
        assert row["trainable_params"] > 0 and row["train_seconds"] > 0
        assert row["memory_kind"] == "cpu_peak_rss" and row["cost_usd"] > 0
        assert row["test_sha256"] == base["test_sha256"]
    samples = work / "results" / "tiny" / "runs" / ok.iloc[1]["run_id"] / "eval" / "samples.jsonl"
    assert len(samples.read_text().splitlines()) == 40


def test_a_missing_model_is_a_row_and_the_exit_code_says_so(finished):
    work, _, _, result = finished
    table = pd.read_csv(work / "results" / "tiny" / "comparison.csv")
    ghost = table[table["model"] == "ghost"]
    assert set(ghost["status"]) == {"missing_model"}
    assert all("models/not-there" in reason for reason in ghost["reason"])
    assert result.returncode == 1
    assert "did not finish" in result.stdout


def test_rerun_does_nothing_and_one_more_run_trains_only_that(finished):
    work, path, exp, _ = finished
    assert "Nothing to be done" in snakemake_dry_run(work, path)
    exp = {**exp, "methods": [*exp["methods"], {"method": "lora", "ranks": [8], "label": "r8"}]}
    path.write_text(yaml.safe_dump(exp))
    jobs = planned_jobs(snakemake_dry_run(work, path))
    assert jobs.get("train") == 2  # the new lora r8 run, for m and for ghost
    assert jobs.get("evaluate") == 2
    assert "pretrain_base" not in jobs and "prepare_data" not in jobs
    assert "tokenize" not in jobs and "evaluate_base" not in jobs


def test_rerun_retries_failed_steps(finished):
    work, path, _, _ = finished
    from tunebench.cli import retire_failed_runs

    retried = retire_failed_runs(work / "results" / "tiny")
    assert any("tokenized" in r for r in retried) and any("train" in r for r in retried)
    jobs = planned_jobs(snakemake_dry_run(work, path))
    assert jobs.get("tokenize") == 1  # the missing model's tokenizer, retried


def test_user_files_from_disk_with_metrics_and_seeds(tmp_path):
    """An alpaca JSON file and a messages JSONL file of the user's, two seeds, several metrics."""
    import json

    from tunebench.builtin import wordops

    words = wordops.make_lexicon(120, seed=0)
    alpaca = wordops.instruction_rows(words, ["reverse"])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reverse.json").write_text(json.dumps(alpaca))
    chats = [
        {
            "messages": [
                {"role": "user", "content": r["instruction"]},
                {"role": "assistant", "content": r["output"]},
            ]
        }
        for r in wordops.instruction_rows(words, ["count"])
    ]
    (tmp_path / "data" / "count.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    metrics = ["exact_match", "answer_accuracy", "rouge_l", "bleu", "chrf"]
    exp = tiny_experiment(
        methods=[{"method": "lora", "ranks": [4], "learning_rate": 5e-3}],
        datasets=[
            {"name": "reverse", "path": "data/reverse.json", "test_size": 20},
            {
                "name": "count",
                "path": "data/count.jsonl",
                "test_size": 20,
                "evaluation": {"metrics": metrics},
            },
        ],
    )
    exp["training"]["seeds"] = [0, 1]
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    result = tunebench(tmp_path, "run", "exp.yaml", "--", "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    table = pd.read_csv(tmp_path / "results" / "tiny" / "comparison.csv")
    assert len(table) == 2 + 2 * 2 and set(table["status"]) == {"ok"}
    count_rows = table[table["dataset"] == "count"]
    for metric in metrics:
        assert count_rows[metric].notna().all(), metric
        assert f"delta_{metric}_vs_base" in table.columns
    assert table[table["dataset"] == "reverse"]["rouge_l"].isna().all()
    assert table.groupby("dataset")["test_sha256"].nunique().eq(1).all()
    assert table["test_sha256"].nunique() == 2
    by_config = pd.read_csv(tmp_path / "results" / "tiny" / "comparison_by_config.csv")
    assert set(by_config[by_config["method"] != "base"]["seeds"]) == {2}
    assert {"exact_match_mean", "exact_match_std"} <= set(by_config.columns)
    assert (
        "Mean and standard deviation over seeds"
        in (tmp_path / "results" / "tiny" / "comparison.md").read_text()
    )
    manifest = json.loads(
        next((tmp_path / "results" / "tiny" / "data").glob("count-*/manifest.json")).read_text()
    )
    assert manifest["counts"]["read"] == 120 and manifest["counts"]["test"] == 20


def test_no_secret_reaches_any_output(finished):
    work, _, _, result = finished
    written = [p for p in work.rglob("*") if p.is_file() and p.name != "tiny.yaml"]
    assert len(written) > 50 and any("wandb" in str(p) for p in written)
    for path in written:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name} leaked into {path.relative_to(work)}"
    for name, value in SECRETS.items():
        assert value not in result.stdout + result.stderr, f"{name} leaked to the console"
