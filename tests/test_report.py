"""What the compile step writes, from hand-made result files of a matrix with long names, two
seeds and failed runs: comparison.md shows the decision columns within 160 characters, the
HTML tables show empty cells (not NaN/None), everything stays in the CSV; the charts name their
measure and keep preference-tuned runs off the SFT line."""

from __future__ import annotations

import json
import re
import stat

import pandas as pd
import pytest
import vl_convert
from conftest import TINY_BUILTIN, tiny_experiment

from tunebench import layout, preflight
from tunebench.experiment import validate_data
from tunebench.io import write_json
from tunebench.matrix import baselines, dataset_key, expand, model_key
from tunebench.reporting import charts, configurations
from tunebench.reporting.report import compile_comparison

LONG = "an-organisation.s-instruction-tuned-model-with-a-long-name-v2.1"  # 64: the most


def experiment():
    exp = tiny_experiment(
        models=[{"name": LONG, "builtin": TINY_BUILTIN}, {"name": "m", "builtin": TINY_BUILTIN}],
        methods=[
            {"method": "full", "learning_rate": 2e-3},
            {"method": "lora", "ranks": [4, 64], "learning_rate": 5e-3},
            {
                "method": "qlora",
                "ranks": [64],
                "learning_rate": 5e-3,
                "quantization": {"quant_type": "nf4", "compute_dtype": "float32"},
            },
        ],
    )
    exp["training"]["seeds"] = [0, 1]
    exp["description"] = "A description long enough to need wrapping. " * 8
    return validate_data(exp)


def results_folder(root, exp) -> list[str]:
    """Result files as the steps write them; the QLoRA runs of the long-named model ran out
    of memory (a long reason), one LoRA seed was killed (no result at all)."""
    failed = []
    for model, dataset in baselines(exp):
        path = layout.BASELINE_RESULT.format(model=model_key(model), dataset=dataset_key(dataset))
        write_json(root / path, {"status": "ok", "exact_match": 0.1, "loss": 4.0, "examples": 40})
    for i, run in enumerate(expand(exp)):
        if run.method == "lora" and run.rank == 64 and run.seed == 1 and run.model.name == "m":
            failed.append(run.run_id)
            continue
        if run.method == "qlora" and run.model.name == LONG:
            failed.append(run.run_id)
            reason = "CUDA out of memory. Tried to allocate 2.00 GiB " * 12
            write_json(
                root / layout.TRAIN_RESULT.format(run_id=run.run_id),
                {"run_id": run.run_id, "status": "oom", "reason": reason},
            )
            continue
        write_json(
            root / layout.TRAIN_RESULT.format(run_id=run.run_id),
            {
                "run_id": run.run_id,
                "status": "ok",
                "steps": 20,
                "train_seconds": 100.0 + i,
                "accelerator_hours": (100.0 + i) / 3600,
                "tokens_per_second": 12345.678,
                "trainable_params": 1000,
                "total_params": 100000,
                "peak_memory_gb": 1.5,
                "memory_kind": "cpu_peak_rss",
                "prediction": {"predicted_peak_gb": 0.75},
                "provenance": {"hardware": {"accelerator": "cpu"}},
                "log_history": [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}],
            },
        )
        write_json(
            root / layout.EVAL_RESULT.format(run_id=run.run_id),
            {"status": "ok", "exact_match": 0.3 + 0.01 * i, "loss": 2.0, "examples": 40},
        )
    return failed


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("results")
    exp = experiment()
    failed = results_folder(root, exp)
    before = os.umask(0o022)
    try:
        table = compile_comparison(exp, root, root, partial=True)
    finally:
        os.umask(before)
    return root, table, failed


def test_comparison_md_shows_the_decision_columns_within_160_characters(compiled):
    root, table, failed = compiled
    text = (root / "comparison_partial.md").read_text()
    too_wide = [line for line in text.splitlines() if len(line) > 160]
    assert not too_wide, too_wide
    header = next(line for line in text.splitlines() if line.startswith("| configuration"))
    cells = [cell.strip() for cell in header.strip("|").split("|")]
    assert cells == [
        "configuration",
        "status",
        "exact_match [95% interval]",
        "gain vs base",
        "GPU memory GB",
        "training",
        "cost USD",
    ]
    rows = [line for line in text.splitlines() if line.startswith("| ") and line != header]
    assert len(rows) == 2 + 2 * 4  # a baseline and four configurations per model
    assert any(re.search(r"\|\s+0\.\d{3} \[0\.\d{3}, 0\.\d{3}\] \|", row) for row in rows)
    assert any(row.startswith("| m lora r64 ") and "| ok 1/2, missing " in row for row in rows)
    # The long name loses its middle: its rows stay apart by method and rank.
    long = {row.split("|")[1].strip() for row in rows if "…" in row}
    suffixes = ("base", "full", "lora r4", "lora r64", "qlora r64 nf4")
    assert len(long) == len(suffixes) and all(name.startswith(LONG[:10] + "…") for name in long)
    assert {next(s for s in suffixes if name.endswith(f"v2.1 {s}")) for name in long} == set(
        suffixes
    )
    assert "0.75 predicted" in text
    listed = text.split("## Runs that did not finish")[1].split("##")[0]
    assert all(run_id in listed for run_id in failed)
    assert "no training result" in listed and "oom: CUDA out of memory" in listed
    # Everything else stays in the CSV, a column per field.
    assert len(table.columns) > 30
    assert {"tokens_per_second", "test_loss", "trainable_params"} <= set(
        pd.read_csv(root / "comparison_partial.csv").columns
    )


def test_the_html_tables_show_empty_cells_not_nan(compiled):
    root, _, _ = compiled
    plain = (root / "comparison_partial.html").read_text()
    assert not re.search(r"<td>\s*(NaN|nan|None|<NA>)\s*</td>", plain)
    report = (root / "comparison_partial_report.html").read_text()
    data = re.findall(r'"data_json": "(.*?)(?<!\\)"', report)
    assert len(data) == 2  # every run, and every configuration
    shown = []
    for table in data:
        cells = [cell for row in json.loads(json.loads(f'"{table}"')) for cell in row]
        shown.append([cell[0] if isinstance(cell, list) else cell for cell in cells])
        assert not {"NaN", "nan", "None", "___NaN___", "<NA>"} & {str(c) for c in shown[-1]}
        assert "" in shown[-1]  # empty cells
    assert "12346" in shown[0]  # tokens/s in whole units, not 1.235e+04


def test_results_are_readable_by_the_group_under_umask_022(compiled):
    root, _, _ = compiled
    for name in (
        "comparison_partial.md",
        "comparison_partial.csv",
        "comparison_partial_report.html",
    ):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o644, name


def configs_with_dpo() -> pd.DataFrame:
    rows = []
    for method, rank, objective, value in [
        ("full", None, "sft", 0.5),
        ("lora", 4, "sft", 0.3),
        ("lora", 8, "sft", 0.4),
        ("lora", 8, "dpo", 0.35),
    ]:
        rows.append(
            {
                "run_id": f"{method}-{rank}-{objective}",
                "model": "m",
                "dataset": "words",
                "method": method,
                "objective": objective,
                "rank": rank,
                "beta": 0.1 if objective == "dpo" else None,
                "status": "ok",
                "reason": "",
                "exact_match": value,
                "peak_memory_gb": 1.0,
                "memory_kind": "cuda_max_reserved",
                "predicted_peak_gb": 1.0,
                "accelerator_hours": 0.1,
                "cost_usd": 1.0,
                "train_seconds": 360.0,
                "trainable_params": 10,
            }
        )
    table = pd.DataFrame(rows)
    table.attrs["metrics"] = ["exact_match"]
    return configurations.configurations(table)


def test_the_rank_sweep_keeps_preference_tuned_runs_off_the_sft_line():
    configs = configs_with_dpo()
    chart = charts.rank_sweep(configs, "exact_match")
    spec = chart.to_dict()
    points = spec["datasets"][spec["layer"][0]["data"]["name"]]
    lines = {(p["series"], p["rank"]) for p in points}
    assert lines == {("lora", 4), ("lora", 8), ("lora + dpo", 8)}
    assert "lora + dpo" in vl_convert.vegalite_to_svg(chart.to_json())  # its own legend entry


def test_the_pareto_chart_names_the_measure_on_its_x_axis():
    configs = configs_with_dpo()
    switched = charts.pareto(configs, "exact_match", True)
    assert "the chosen measure" not in switched.to_json()
    svg = vl_convert.vegalite_to_svg(switched.to_json())
    first = charts.MEASURES["gpu_memory_gb"]  # shown until another is chosen
    assert svg.count(first) >= 2  # the axis and the title
    for measure, label in charts.MEASURES.items():
        one = charts.pareto(configs, "exact_match", True, measure)
        assert one.to_dict()["layer"][0]["encoding"]["x"]["title"] == label


def test_the_pareto_chart_leaves_out_a_search_s_pruned_configurations_but_not_failed_ones():
    configs = configs_with_dpo()
    # Two finished rows made unfinished: one pruned by a search, one out of memory.
    configs.loc[configs.index[0], "status"] = "pruned"
    configs.loc[configs.index[1], "status"] = "oom"
    spec = charts.pareto(configs, "exact_match", True).to_dict()
    statuses = {
        row.get("status") for rows in spec["datasets"].values() for row in rows if "band" in row
    }
    assert statuses == {"oom"}


def test_a_preflight_is_a_section_of_the_html_report(compiled, tmp_path):
    """results/<name>/preflight/preflight.json, when `tunebench preflight` wrote one: its
    shapes, measured beside predicted, and why one failed."""
    import shutil

    root = tmp_path / "results"
    shutil.copytree(compiled[0], root)
    shapes = [
        {"gpu_class": "a100", "run_id": "m-lora-r4", "status": "ok", "peak_memory_gb": 3.25,
         "predicted_peak_gb": 3.5, "allocated_error_pct": 4.2},
        {"gpu_class": "a100", "run_id": "m-qlora-r64", "status": "failed",
         "reason": "bitsandbytes: no kernel image is available"},
    ]  # fmt: skip
    write_json(
        root / layout.PREFLIGHT / "preflight.json",
        {"classes": [{"gpu_class": "a100", "machine": "NVIDIA A100"}], "changes": ["3 steps"],
         "ok": False, "shapes": shapes, "columns": [[k, t] for k, t, _ in preflight.COLUMNS]},
    )  # fmt: skip
    compile_comparison(experiment(), root, root, partial=True)
    report = (root / "comparison_partial_report.html").read_text()
    assert '<h2 id="preflight">Preflight</h2>' in report and 'href="#preflight"' in report
    assert "GPU class a100 on NVIDIA A100" in report and "Some shapes failed" in report
    (table,) = re.findall(r'"data_json": "(.*?)(?<!\\)"', report.split('id="preflight"')[1])
    rows = json.loads(json.loads(f'"{table}"'))
    assert rows[1][:3] == ["a100", "m-qlora-r64", "failed"]
    assert rows[1][-1] == "bitsandbytes: no kernel image is available"
    assert '"peak GiB, predicted"' in report or "peak GiB, predicted" in report
