"""End to end: `tunebench run` drives real Snakemake jobs on a tiny experiment in a temp dir."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, tiny_experiment
from helpers import path_without_the_environment, tunebench

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


# Fake secrets given to the end-to-end run; none may appear in any file it writes.
SECRETS = {
    "HF_TOKEN": "hf_FAKEfakeFAKE1234567890",
    "WANDB_API_KEY": "0123456789abcdef" * 2 + "fake",
    "MY_DATABASE_PASSWORD": "correct-horse-battery-staple",
}


def bare_snakemake(cwd: Path, experiment: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake itself, without the tunebench wrapper, as the Snakefile's header shows."""
    return subprocess.run(
        [
            str(BIN / "snakemake"),
            "--snakefile",
            str(REPO / "workflow" / "Snakefile"),
            "--configfile",
            str(experiment),
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": path_without_the_environment(), "HF_HUB_OFFLINE": "1"},
    )


def snakemake_dry_run(cwd: Path, experiment: Path) -> str:
    out = bare_snakemake(cwd, experiment, "--dry-run")
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
    # Export the LoRA runs (the ghost's never finishes) and the best run, as q8_0 GGUF.
    exp["export"] = {"runs": [{"method": "lora"}], "best_by": "exact_match", "types": ["q8_0"]}
    exp["report"] = {"budgets": [{"name": "any"}, {"name": "a crumb", "gpu_memory_gb": 0.001}]}
    exp["reference"] = {
        "study": "a made-up study",
        "hardware": "NVIDIA L40S",
        "cells": [
            {
                "run": {"model": "m", "method": "full"},
                "measure": "test_loss",
                "value": 3.0,
                "source": "nowhere, a test",
            }
        ],
    }
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(exp))
    secrets = {**SECRETS, "WANDB_MODE": "offline"}
    result = tunebench(work, "run", str(path), "--", "--cores", "2", env=secrets)
    return work, path, exp, result


def test_the_table_has_a_row_per_run_and_baseline(finished):
    work, _, _, result = finished
    table = pd.read_csv(work / "results" / "tiny" / "comparison.csv")
    assert (work / "results" / "tiny" / "comparison.md").is_file(), result.stderr[-3000:]
    markdown = (work / "results" / "tiny" / "comparison.md").read_text()
    assert max(len(line) for line in markdown.splitlines()) <= 160
    assert not re.search(
        r">\s*(NaN|None)\s*<", (work / "results" / "tiny" / "comparison.html").read_text()
    )
    plots = work / "results" / "tiny" / "plots"
    for name in ("pareto_gpu_memory_gb", "pareto_hours", "rank_sweep", "loss_curves"):
        assert (plots / f"{name}.png").stat().st_size > 10_000, name
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


def test_every_row_carries_retention_and_the_report_draws_the_front(finished):
    """Retention is on by default (docs/retention.md): scored in each evaluation job."""
    work = finished[0]
    out = work / "results" / "tiny"
    table = pd.read_csv(out / "comparison.csv")
    ok = table[(table["model"] == "m") & (table["status"] == "ok")]
    for measure in ("text_loss", "instructions_loss", "choice_accuracy"):
        assert ok[f"retention_{measure}"].notna().all(), measure
        deltas = ok[f"delta_retention_{measure}_vs_base"]
        assert deltas.notna().all() and (deltas[ok["method"] == "base"] == 0).all(), measure
    assert (ok["reason"].fillna("") == "").all()
    assert (out / "plots" / "forgetting.png").stat().st_size > 10_000
    assert "Gain against forgetting" in (out / "report.html").read_text()


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Debian's headless Chromium (`.ci/run` installs it), as a person's browser would open a
    file: JavaScript on, no network needed."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "this test needs Debian's chromium: apt-get install chromium (.ci/run does)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000"]
    return subprocess.run(
        [binary, *flags, *args], capture_output=True, text=True, timeout=180, check=True
    )


def test_the_html_report_opens_in_a_browser(finished, tmp_path):
    from PIL import Image, ImageStat

    work, _, _, _ = finished
    results = work / "results" / "tiny"
    report = results / "report.html"
    assert "cdn.jsdelivr" not in report.read_text()  # everything it needs is inside
    shot = tmp_path / "report.png"
    chromium("--window-size=1300,2200", f"--screenshot={shot}", report.as_uri())
    pixels = ImageStat.Stat(Image.open(shot).convert("L"))
    assert pixels.stddev[0] > 20, "the screenshot is blank"
    dom = chromium("--dump-dom", report.as_uri()).stdout
    for run_id in pd.read_csv(results / "comparison.csv")["run_id"]:
        assert run_id in dom, run_id
    assert "dt-container" in dom  # DataTables ran: sortable, filterable
    assert dom.count('role="graphics-document"') >= 3  # Vega drew the charts
    assert "Nothing fits this budget" in dom and "missing_model" in dom
    advice = (results / "recommendation.md").read_text()
    assert advice.count("- Best: **m ") == 1 and "Does not fit: ghost" in advice, advice
    # The reference block: published beside reproduced, in its own file and in the report.
    reproduced = pd.read_csv(results / "reproduction.csv")
    assert list(reproduced["configuration"]) == ["m full"], reproduced
    assert reproduced["reproduced"].notna().all() and "Reproduction: a made-up study" in dom


def test_snakemake_report_packs_the_recommendation_and_charts(finished, tmp_path):
    work, path, _, _ = finished
    out = tmp_path / "snakemake_report.html"
    result = bare_snakemake(work, path, "--report", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("recommendation.md", "report.html", "pareto_gpu_memory_gb.png"):
        assert f"Adding {name}" in result.stderr + result.stdout, name
    assert out.stat().st_size > 100_000


def test_the_report_re_renders_a_partial_results_folder(finished, tmp_path):
    work, _, _, _ = finished
    copy = tmp_path / "tiny"
    shutil.copytree(work / "results" / "tiny", copy, symlinks=True)  # wandb links its logs
    lost = next(copy.glob("runs/m-lora-*/eval/result.json"))
    lost.unlink()
    result = tunebench(work, "report", str(copy), "--partial")
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(copy / "comparison_partial.csv")
    assert "missing" in set(table["status"])
    page = (copy / "comparison_partial_report.html").read_text()
    assert "partial: some runs have no result yet" in page


def test_chosen_and_best_runs_are_exported_and_checked(finished):
    work, _, _, result = finished
    root = work / "results" / "tiny"
    table = pd.read_csv(root / "comparison.csv")
    runs = {r.model: r.run_id for r in table[table["method"] == "lora"].itertuples()}

    exported = json.loads((root / "exports" / "runs" / runs["m"] / "manifest.json").read_text())
    assert exported["check"]["passed"] and exported["run"]["run_id"] == runs["m"]
    (gguf,) = exported["gguf"]
    assert gguf["type"] == "q8_0"
    assert (root / "exports" / "runs" / runs["m"] / gguf["file"]).stat().st_size > 10_000

    # The ghost's LoRA run never trained: its export is a recorded skip, with nothing else.
    ghost = root / "exports" / "runs" / runs["ghost"]
    skipped = json.loads((ghost / "result.json").read_text())
    assert skipped["status"] == "skipped" and runs["ghost"] in skipped["reason"]
    assert not list(ghost.glob("*.gguf"))

    best = json.loads((root / "exports" / "best" / "words" / "result.json").read_text())
    m_rows = table[(table["model"] == "m") & (table["method"] != "base")]
    assert best["status"] == "ok" and best["export"] in set(m_rows["run_id"])
    assert best["chosen_by"]["value"] == m_rows["exact_match"].max()
    assert f"export: {ghost.relative_to(work)} did not finish [skipped]" in result.stdout


def test_a_missing_model_is_a_row_and_the_exit_code_says_so(finished):
    work, _, _, result = finished
    table = pd.read_csv(work / "results" / "tiny" / "comparison.csv")
    ghost = table[table["model"] == "ghost"]
    assert set(ghost["status"]) == {"missing_model"}
    assert all("models/not-there" in reason for reason in ghost["reason"])
    assert result.returncode == 1
    assert "did not finish" in result.stdout


def planned_runs(dry_run_output: str, rule: str) -> set[str]:
    """Run ids of the jobs of `rule` in a dry run."""
    blocks = re.findall(rf"^rule {rule}:\n(.*?)(?=^\S)", dry_run_output, re.M | re.S)
    return {m for block in blocks for m in re.findall(r"wildcards: run_id=(\S+)", block)}


def test_rerun_redoes_only_what_failed_or_changed(finished):
    """Everything of model m finished: nothing of it runs again. Only the missing model's
    steps (failed rows) are retried; one more method trains only its own runs."""
    work, path, exp, _ = finished
    planned = snakemake_dry_run(work, path)
    assert {r.split("-")[0] for r in planned_runs(planned, "train")} == {"ghost"}
    exp = {**exp, "methods": [*exp["methods"], {"method": "lora", "ranks": [8], "label": "r8"}]}
    path.write_text(yaml.safe_dump(exp))
    planned = snakemake_dry_run(work, path)
    of_m = {r for r in planned_runs(planned, "train") if r.startswith("m-")}
    assert len(of_m) == 1 and "lora-r8" in of_m.pop()
    assert planned_runs(planned, "evaluate") == planned_runs(planned, "train")
    jobs = planned_jobs(planned)
    assert "pretrain_base" not in jobs and "prepare_data" not in jobs


def test_rerun_retries_failed_steps_with_or_without_the_wrapper(finished):
    """A step whose result recorded a failure is retried by the next invocation, bare Snakemake
    included; the failed result is kept under attempts/."""
    work, path, _, _ = finished
    root = work / "results" / "tiny"
    planned = snakemake_dry_run(work, path)
    jobs = planned_jobs(planned)
    assert jobs.get("tokenize") == 1  # the missing model's tokenizer, retried
    assert "retry after missing_model" in planned
    assert jobs.get("evaluate_base") == 1  # the missing model's baseline, downstream of it
    assert {r.split("-")[0] for r in planned_runs(planned, "train")} >= {"ghost"}
    kept = list(root.glob("data/*/tokenized/*/attempts/*.json"))
    assert kept and json.loads(kept[0].read_text())["status"] == "missing_model"


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
    tuned = by_config[by_config["method"] != "base"]
    assert set(tuned["seeds"]) == {2} and set(tuned["finished"]) == {2}
    assert {"exact_match", "exact_match_sd", "exact_match_low", "exact_match_high"} <= set(
        by_config.columns
    )
    assert (tuned["exact_match_low"] <= tuned["exact_match_high"]).all()
    text = (tmp_path / "results" / "tiny" / "comparison.md").read_text()
    # A decision table per dataset: the metric's mean with its interval over the two seeds.
    assert "### Dataset reverse" in text and "### Dataset count" in text
    assert re.search(r"\|\s+-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\] \|", text), text
    # Recommended on the first dataset only, from two seeds each.
    advice = (tmp_path / "results" / "tiny" / "recommendation.md").read_text()
    assert "dataset 'reverse'" in advice and "2 seeds" in advice, advice
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


def experiment_with_a_bad_dataset(tmp_path: Path, with_good_dataset: bool) -> Path:
    """A model folder that does not exist (its steps record missing_model at once) and a data
    file whose second line is not JSON (its preparation fails, naming file and line)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    datasets = [{"name": "bad", "path": "data/bad.jsonl"}]
    if with_good_dataset:
        datasets.append({"name": "words", "builtin": "wordops", "n_words": 120})
    exp = tiny_experiment(
        models=[{"name": "ghost", "path": "models/not-there"}],
        methods=[{"method": "lora", "ranks": [4]}],
        datasets=datasets,
    )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_bare_snakemake_keeps_going_after_a_failed_job(tmp_path):
    """workflow/profiles/default applies without the wrapper: a job that fails (the bad
    dataset's preparation) does not stop the independent ones (the good dataset's steps)."""
    path = experiment_with_a_bad_dataset(tmp_path, with_good_dataset=True)
    out = bare_snakemake(tmp_path, path)
    assert out.returncode != 0
    assert "Using workflow specific profile" in out.stdout + out.stderr
    (evaluated,) = (tmp_path / "results" / "tiny" / "runs").glob("ghost-lora-*-words-*/eval")
    assert json.loads((evaluated / "result.json").read_text())["status"] == "skipped"


def test_when_nothing_finishes_the_wrapper_names_the_first_failing_log(tmp_path):
    path = experiment_with_a_bad_dataset(tmp_path, with_good_dataset=False)
    result = tunebench(tmp_path, "run", str(path))
    assert result.returncode != 0
    message = result.stderr.splitlines()[-1]
    assert "the first failing job was rule prepare_data" in message, result.stderr[-2000:]
    assert "logs/prepare_data/bad-" in message and "bad.jsonl:2" in message
    assert "KeyError" not in result.stderr
