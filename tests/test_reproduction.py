"""Published against reproduced on constructed results: tolerances by kind, time as ratios when
the GPU differs, rehearsals never comparable, unfinished cells, ranking agreement."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import tiny_experiment

from tunebench.experiment import ExperimentError, validate_data
from tunebench.matrix import expand
from tunebench.reporting import configurations, reproduction

REFERENCE = {
    "study": "a study",
    "hardware": "NVIDIA L40S",
    "cells": [
        {"run": {"method": "full"}, "measure": "exact_match", "value": 0.60, "source": "T1"},
        {
            "run": {"method": "lora", "rank": 8},
            "measure": "exact_match",
            "value": 0.55,
            "source": "T1",
        },
        {
            "run": {"method": "lora", "rank": 2},
            "measure": "exact_match",
            "value": 0.40,
            "source": "T1",
        },
        {"run": {"method": "full"}, "measure": "peak_memory_gb", "value": 40.0, "source": "T2"},
        {"run": {"method": "full"}, "measure": "train_seconds", "value": 100.0, "source": "T2"},
        {
            "run": {"method": "lora", "rank": 8},
            "measure": "train_seconds",
            "value": 50.0,
            "source": "T2",
        },
    ],
}


def results(
    gpu: str, quality=(0.62, 0.50, 0.41), memory=42.0, seconds=(30.0, 16.0), lora8_status="ok"
) -> pd.DataFrame:
    rows = [
        ("full", None, quality[0], memory, seconds[0], "ok"),
        ("lora", 8, quality[1], 20.0, seconds[1], lora8_status),
        ("lora", 2, quality[2], 19.0, 15.0, "ok"),
    ]
    table = pd.DataFrame(
        [
            {
                "run_id": f"{m}-{r}",
                "model": "m",
                "dataset": "words",
                "method": m,
                "backend": "hf",
                "rank": r,
                "alpha": None,
                "quant_type": None,
                "learning_rate": 1e-3,
                "seed": 0,
                "status": status,
                "reason": "",
                "exact_match": q,
                "peak_memory_gb": mem,
                "memory_kind": "cuda_max_reserved",
                "predicted_peak_gb": mem,
                "train_seconds": t,
                "accelerator_hours": t / 3600,
                "cost_usd": 0.0,
                "accelerator": gpu,
                "trainable_params": 1,
            }
            for m, r, q, mem, t, status in rows
        ]
    )
    table.attrs["metrics"] = ["exact_match"]
    return table


METHODS = [
    {"method": "full", "learning_rate": 2e-3},
    {"method": "lora", "ranks": [8, 2], "learning_rate": 5e-3},
]


def compared(table, reference=REFERENCE, mode="full"):
    exp = validate_data(tiny_experiment(methods=METHODS, reference=reference | {"mode": mode}))
    # The constructed rows carry the ids of the runs the experiment expands to.
    ids = {(r.method, r.rank): r.run_id for r in expand(exp)}
    table["run_id"] = [
        ids[(m, None if pd.isna(r) else r)]
        for m, r in zip(table["method"], table["rank"], strict=True)
    ]
    configs = configurations.configurations(table)
    return reproduction.compare(table, configs, exp), exp


def test_on_the_published_gpu_everything_is_compared_directly():
    rows, exp = compared(results("NVIDIA L40S"))
    by = {(r.configuration, r.measure): r for r in rows.itertuples()}
    full = by[("m full", "exact_match")]
    assert full.delta == pytest.approx(0.02) and full.verdict == "within tolerance"
    lora = by[("m lora r8", "exact_match")]
    assert lora.delta == pytest.approx(-0.05) and lora.verdict == "within tolerance"
    memory = by[("m full", "peak_memory_gb")]
    assert memory.delta == pytest.approx(0.05) and memory.compared == "relative"
    seconds = by[("m full", "train_seconds")]
    assert seconds.compared == "relative" and seconds.verdict == "outside tolerance"
    assert reproduction.ranking_agreement(rows) == pytest.approx(1.0)
    text = reproduction.markdown(rows, exp)
    assert "Published on NVIDIA L40S; reproduced on NVIDIA L40S." in text and "T2" in text


def test_on_another_gpu_time_is_compared_as_ratios():
    rows, exp = compared(results("NVIDIA H200"))
    lora = rows[(rows["configuration"] == "m lora r8") & (rows["measure"] == "train_seconds")]
    (row,) = lora.itertuples()
    # published 50/100 = 0.5; reproduced 16/30 = 0.533: 6.7% off, within 25%
    assert row.compared == "ratio" and row.reproduced == pytest.approx(16 / 30)
    assert row.delta == pytest.approx((16 / 30 - 0.5) / 0.5) and row.verdict == "within tolerance"
    assert "The GPUs differ" in reproduction.markdown(rows, exp)


def test_a_rehearsal_is_never_comparable_and_unfinished_cells_say_so():
    rows, _ = compared(results("cpu", lora8_status="oom"), mode="rehearsal")
    verdicts = dict(
        zip(rows["configuration"] + " " + rows["measure"], rows["verdict"], strict=True)
    )
    assert verdicts["m full exact_match"] == reproduction.REHEARSAL
    assert verdicts["m lora r8 exact_match"] == "not reproduced: no result"
    assert verdicts["m full peak_memory_gb"] == reproduction.REHEARSAL


def test_resources_mode_claims_memory_and_speed_but_no_quality():
    rows, exp = compared(results("NVIDIA L40S"), mode="resources")
    by = {(r.configuration, r.measure): r.verdict for r in rows.itertuples()}
    assert by[("m full", "exact_match")] == reproduction.QUALITY_NOT_CLAIMED
    assert by[("m full", "peak_memory_gb")] == "within tolerance"
    assert "Resources mode" in reproduction.markdown(rows, exp)


def test_a_reversed_ranking():
    rows, _ = compared(results("NVIDIA L40S", quality=(0.3, 0.5, 0.7)))
    assert reproduction.ranking_agreement(rows) == pytest.approx(-1.0)


def test_a_cell_must_select_a_run_of_the_experiment():
    for run, message in (
        ({"method": "dora"}, r"reference.cells\[3\].run: matches no run"),
        ({"flavour": "x"}, r"reference.cells\[3\].run.flavour: unknown field"),
    ):
        cell = {"run": run, "measure": "exact_match", "value": 0.5, "source": "T1"}
        reference = {**REFERENCE, "cells": [*REFERENCE["cells"][:3], cell]}
        with pytest.raises(ExperimentError, match=message):
            validate_data(tiny_experiment(methods=METHODS, reference=reference))


def test_the_reference_block_is_checked():
    bad = {
        **REFERENCE,
        "cells": [{"run": {"method": "full"}, "measure": "speed", "value": 1, "source": "x"}],
    }
    with pytest.raises(ExperimentError, match="reference.cells"):
        validate_data(tiny_experiment(reference=bad))


def test_a_matrix_whose_every_run_failed_still_gets_its_plots_folder(tmp_path):
    from tunebench.reporting import report

    table = results("cpu")
    table["status"] = "failed"
    for measured in ("exact_match", "train_seconds", "peak_memory_gb", "predicted_peak_gb"):
        table[measured] = None
    exp = validate_data(tiny_experiment(methods=METHODS))
    configs = configurations.configurations(table)
    report.write_plots(table, configs, exp, tmp_path, tmp_path / "plots")
    assert (tmp_path / "plots").is_dir()  # the compile rule's declared output
