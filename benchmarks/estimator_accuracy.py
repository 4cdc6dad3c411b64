"""How good is `tunebench estimate`? Predicted vs published (and our own H200) measurements.

Inputs (benchmarks/data/, each value with its source):
- published_memory.csv: single-GPU runs from PEFT's method_comparison, torchtune, LitGPT,
  Raschka's articles, fms-acceleration and ms-swift; their models' configurations are
  tunebench's table of known models (src/tunebench/estimate/architectures.csv);
- h200_measurements.json, h200_held_out.json: benchmarks/gpu_estimator_check.py on the H200
  lent to this project.

Every row is predicted from its configuration alone. The few fitted constants
(tunebench/estimate/calibration.py) are fitted leave-one-source-out: each source's rows are
predicted with constants fitted on every other source, and those held-out errors are what
this prints. What is compared with what:
- a row that gives `torch.cuda.max_memory_allocated` is compared with the predicted allocated
  peak (the counted part of the estimate), and also reported on reserved where it gives both;
- reserved / unknown with the predicted reserved peak; nvidia-smi with reserved + the CUDA
  context + paged optimizer states (unified memory, which torch does not count);
- step time only where every row has the same length (packed or fixed): where lengths vary,
  the time depends on the mean length, which most sources do not give.

    python benchmarks/estimator_accuracy.py            # prints; writes figures/estimator_accuracy.*
    python benchmarks/estimator_accuracy.py --fit      # also prints constants fitted on all rows
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from tunebench.estimate import architectures, calibration, estimate  # noqa: E402
from tunebench.estimate.gpus import find  # noqa: E402
from tunebench.estimate.memory import GIB  # noqa: E402
from tunebench.estimate.setup import Setup  # noqa: E402

DATA = HERE / "data"
# benchmarks/gpu_estimator_check.py on the H200: the first set, and the held-out set measured
# after the constants were fitted (predicted before measuring; docs/estimator.md).
H200_FILES = ("h200_measurements.json", "h200_held_out.json")
FIGURES = HERE / "figures"
CAPACITIES_GB = (16, 24, 40, 48, 80)
OPTIMIZERS = {"adamw_fused": "adamw_torch_fused"}
STACKS = {"litgpt": "litgpt", "torchtune": "torchtune", "peft_runner": "peft_runner"}


def not_modelled(r: dict) -> str:
    """What a published run did that the estimator does not model (empty: all of it)."""
    reasons = []
    if r["torch_compile"] == "true":
        reasons.append("torch.compile")
    for feature in ("optimizer_in_bwd", "activation_offloading"):
        if feature in r["liger_or_fused"]:
            reasons.append(feature)
    if r["stack"] == "torchtune" and r["method"] == "qlora":
        reasons.append("torchao NF4, not bitsandbytes")
    if "gpt_bigcode" in r["architecture"]:
        reasons.append("transformers 4.48 GPTBigCode loss: no float32 upcast")
    return "; ".join(reasons)


# Runs on transformers + PEFT + bitsandbytes, the stack tunebench trains with.
HF_STACKS = ("hf", "fms", "peft_runner")
GOALS = {"mape": 10.0, "under10": 5.0, "verdicts": 95.0, "time_mape": 25.0}


def model_config(hub_id: str):
    """The architecture of a measured run, from tunebench's table of known models."""
    return architectures.config(hub_id)


# Sources name adapted layers as Llama does; other architectures call them otherwise (a fused
# query-key-value layer takes the adapter of any of the three).
LAYER_NAMES = {
    "gpt_neox": {
        "q_proj": "query_key_value",
        "k_proj": "query_key_value",
        "v_proj": "query_key_value",
        "o_proj": "dense",
        "up_proj": "dense_h_to_4h",
        "down_proj": "dense_4h_to_h",
    },
    "gpt_bigcode": {
        "q_proj": "c_attn",
        "k_proj": "c_attn",
        "v_proj": "c_attn",
        "o_proj": "attn.c_proj",
        "up_proj": "c_fc",
        "down_proj": "mlp.c_proj",
    },
    "phi": {"o_proj": "dense", "up_proj": "fc1", "down_proj": "fc2"},
}


def in_architecture(setup: Setup, model_type: str) -> Setup:
    names = LAYER_NAMES.get(model_type)
    if not names or isinstance(setup.target_modules, str):
        return setup
    mapped = tuple(
        dict.fromkeys(
            names.get(t, t)
            for t in setup.target_modules
            if t != "gate_proj" or model_type not in names
        )
    )
    return replace(setup, target_modules=mapped)


def _targets(text: str):
    names = tuple(t for t in text.split(",") if t)
    if not names or set(names) >= {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }:
        return "all-linear"
    return names


def _loss(kernels: str) -> str:
    if "chunked" in kernels:
        return "chunked"
    if "liger" in kernels or "fast_loss" in kernels:
        return "fused"
    return "standard"


def published_rows() -> list[dict]:
    rows = []
    for r in csv.DictReader((DATA / "published_memory.csv").open()):
        unit = GIB if r["memory_unit"] == "GiB" else 1e9
        setup = Setup(
            method=r["method"],
            rank=int(r["rank"]) if r["rank"] else None,
            target_modules=_targets(r["target_modules"]),
            quant_type=r["quant_type"] or None,
            double_quant=r["double_quant"] == "true",
            compute_dtype={"bf16": "bfloat16", "fp16": "float16"}.get(
                r["weights_dtype"], "float32"
            ),
            optimizer=OPTIMIZERS.get(r["optimizer"], r["optimizer"]),
            batch_size=int(r["batch_size"]),
            seq_len=int(r["seq_len"]),
            gradient_checkpointing=r["gradient_checkpointing"] == "true",
            attention="flash_attention_2" if r["attention"] == "flash_attention_2" else "sdpa",
            padding_free=r["seq_len_kind"] == "packed",
            loss=_loss(r["liger_or_fused"]),
            stack=STACKS.get(r["stack"]) or ("fms" if r["source"] == "fms_acceleration" else "hf"),
        )
        allocated = float(r["measured_allocated_gb"]) * unit if r["measured_allocated_gb"] else None
        step = float(r["step_time_s"]) if r["step_time_s"] else None
        if step is None and r["tokens_per_s"]:
            step = setup.batch_size * setup.seq_len / float(r["tokens_per_s"])
        rows.append(
            {
                "row_id": r["row_id"],
                "source": r["source"],
                "architecture": r["architecture"],
                "setup": setup,
                "hardware": f"{r['hardware']} {r['gpu_memory_gb']}GB"
                if r["gpu_memory_gb"] and "GB" not in r["hardware"]
                else r["hardware"],
                "kind": r["memory_kind"],
                "measured": float(r["measured_peak_gb"]) * unit,
                "measured_allocated": allocated,
                "step_seconds": step if r["seq_len_kind"] == "packed" else None,
                "not_modelled": not_modelled(r),
            }
        )
    return rows


def h200_rows() -> list[dict]:
    rows = []
    for name in H200_FILES:
        rows += _h200_rows(json.loads((DATA / name).read_text()))
    return rows


def _h200_rows(record: dict) -> list[dict]:
    rows = []
    for r in record["rows"]:
        if "peak_allocated_gib" not in r:
            continue
        fields = dict(r["setup"])
        if "fused_loss" in fields:  # recorded before Setup.loss existed
            fields["loss"] = "fused" if fields.pop("fused_loss") else "standard"
        if isinstance(fields["target_modules"], list):
            fields["target_modules"] = tuple(fields["target_modules"])
        rows.append(
            {
                "row_id": "h200 " + r["config"],
                "source": "tunebench_h200",
                "architecture": r["architecture"],
                "setup": Setup(**fields),
                "hardware": record["gpu"],
                "kind": "reserved",
                "measured": r["peak_reserved_gib"] * GIB,
                "measured_allocated": r["peak_allocated_gib"] * GIB,
                "step_seconds": r["step_seconds"],
                "not_modelled": "",
            }
        )
    return rows


def predict_all(rows: list[dict]) -> None:
    """Attach the constant-free parts of each prediction (allocated peak, FLOP-based time)."""
    for row in rows:
        config = model_config(row["architecture"])
        try:
            gpu = find(row["hardware"])
        except KeyError:  # not named by the source: memory only
            gpu, row["step_seconds"] = None, None
        row["setup"] = in_architecture(row["setup"], config.model_type)
        result = estimate(config, row["setup"], [gpu] if gpu else [])
        # The counted peak: calibration.MEMORY.unattributed is applied in predicted_memory.
        row["allocated"] = result.memory.peak_allocated / (1 + calibration.MEMORY.unattributed)
        row["unified"] = result.memory.unified_memory
        row["terms"] = result.memory.gib()
        row["gpu"] = gpu
        row["footprint"] = result.footprint
        row["config"] = config


def predicted_memory(row: dict, mem) -> tuple[float, float | None]:
    """(prediction for the row's own kind, prediction of allocated if it was measured)."""
    allocated = row["allocated"] * (1 + mem.unattributed)
    reserved = allocated * (1 + mem.allocator_overhead) + mem.workspace_gib * GIB
    if row["kind"] == "allocated":
        own = allocated
    elif row["kind"] == "nvidia-smi":
        own = reserved + mem.context_gib * GIB + row["unified"]
    else:
        own = reserved
    return own, allocated if row["measured_allocated"] else None


def primary_error(row: dict, mem) -> float:
    """Relative error of the row's primary comparison (allocated where measured)."""
    own, allocated = predicted_memory(row, mem)
    if allocated is not None:
        return (allocated - row["measured_allocated"]) / row["measured_allocated"]
    return (own - row["measured"]) / row["measured"]


def predicted_step(row: dict, speed) -> float | None:
    from tunebench.estimate.speed import estimate_speed

    result = estimate_speed(row["setup"], row["footprint"], row["config"], row["gpu"], speed)
    return result.step_seconds


def weighted(error: float) -> float:
    """The fit's loss: under-predictions (out-of-memory risk) count twice."""
    return 2 * -error if error < 0 else error


def fit_memory(rows: list[dict]):
    """Grid search: the counted terms do not depend on the constants, so this is cheap."""
    best = None
    for unattributed in np.arange(0.0, 0.21, 0.01):
        for overhead in np.arange(0.0, 0.21, 0.02):
            for workspace in np.arange(0.0, 1.01, 0.1):
                for context in np.arange(0.3, 1.01, 0.1):
                    mem = calibration.MemoryConstants(
                        float(unattributed), float(overhead), float(workspace), float(context)
                    )
                    score = np.mean([weighted(primary_error(r, mem)) for r in rows])
                    if best is None or score < best[0]:
                        best = (score, mem)
    return best[1]


def fit_speed(rows: list[dict]):
    timed = [r for r in rows if r["step_seconds"]]
    if not timed:
        return calibration.SPEED
    best = None
    for eff in np.arange(0.1, 0.91, 0.05):
        for overhead in (0.0, 0.01, 0.02, 0.05, 0.1):
            for per_layer in (0.0, 0.0005, 0.001, 0.002, 0.004, 0.008):
                speed = calibration.SpeedConstants(float(eff), overhead, per_layer)
                score = np.mean(
                    [
                        abs(predicted_step(r, speed) - r["step_seconds"]) / r["step_seconds"]
                        for r in timed
                    ]
                )
                if best is None or score < best[0]:
                    best = (score, speed)
    return best[1]


def held_out(rows: list[dict]) -> dict:
    """Leave-one-source-out: constants for each source fitted on all the others."""
    by_source = {}
    for source in sorted({r["source"] for r in rows}):
        train = [r for r in rows if r["source"] != source]
        by_source[source] = (fit_memory(train), fit_speed(train))
    return by_source


def summarise(rows: list[dict], constants: dict) -> tuple[list[dict], dict]:
    table = []
    for r in rows:
        mem, speed = constants[r["source"]]
        own, allocated = predicted_memory(r, mem)
        err = primary_error(r, mem)
        reserved_err = None
        if r["measured_allocated"] and r["kind"] in ("reserved", "nvidia-smi"):
            reserved_err = (own - r["measured"]) / r["measured"]
        step = predicted_step(r, speed) if r["step_seconds"] else None
        measured_primary = r["measured_allocated"] or r["measured"]
        predicted_primary = allocated if allocated is not None else own
        table.append(
            {
                "row_id": r["row_id"],
                "source": r["source"],
                "stack": r["setup"].stack,
                "compared": "allocated" if r["measured_allocated"] else r["kind"],
                "measured_gib": measured_primary / GIB,
                "predicted_gib": predicted_primary / GIB,
                "error_pct": 100 * err,
                "reserved_error_pct": None if reserved_err is None else 100 * reserved_err,
                "measured_step_s": r["step_seconds"],
                "predicted_step_s": step,
                "step_error_pct": None
                if step is None
                else 100 * (step - r["step_seconds"]) / r["step_seconds"],
                "not_modelled": r["not_modelled"],
            }
        )
    modelled = [t for t in table if not t["not_modelled"]]
    hf = [t for t in modelled if t["stack"] in HF_STACKS]
    summary = {"all": figures(table), "modelled": figures(modelled), "hf": figures(hf)}
    return table, summary


def figures(table: list[dict]) -> dict:
    errors = np.array([t["error_pct"] for t in table])
    verdicts = [
        (t["measured_gib"] * GIB / 1e9 <= cap) == (t["predicted_gib"] * GIB / 1e9 <= cap)
        for t in table
        for cap in CAPACITIES_GB
    ]
    step_errors = np.array([t["step_error_pct"] for t in table if t["step_error_pct"] is not None])
    reserved = np.array(
        [t["reserved_error_pct"] for t in table if t["reserved_error_pct"] is not None]
    )
    return {
        "rows": len(table),
        "sources": len({t["source"] for t in table}),
        "mape": float(np.mean(np.abs(errors))),
        "max_ape": float(np.max(np.abs(errors))),
        "under10": float(100 * np.mean(errors < -10)),
        "verdicts": float(100 * np.mean(verdicts)),
        "time_rows": len(step_errors),
        "time_mape": float(np.mean(np.abs(step_errors))) if len(step_errors) else None,
        "reserved_rows": len(reserved),
        "reserved_mape": float(np.mean(np.abs(reserved))) if len(reserved) else None,
    }


def by_source(table: list[dict]) -> list[str]:
    lines = [
        "| source | rows | mean abs error % | max abs error % | under-predicted >10% |",
        "|---|---|---|---|---|",
    ]
    for source in sorted({t["source"] for t in table}):
        e = np.array([t["error_pct"] for t in table if t["source"] == source])
        lines.append(
            f"| {source} | {len(e)} | {np.mean(np.abs(e)):.1f} | "
            f"{np.max(np.abs(e)):.1f} | {int(np.sum(e < -10))} |"
        )
    return lines


def report(table: list[dict], summary: dict, constants: dict, machine: str) -> str:
    goal = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    h, m, a = summary["hf"], summary["modelled"], summary["all"]
    cols = (h, m, a)

    def cells(key, fmt="{:.1f}%"):
        return " | ".join("n/a" if f[key] is None else fmt.format(f[key]) for f in cols)

    lines = [
        "# Estimator accuracy (leave-one-source-out)",
        "",
        f"Written by `benchmarks/estimator_accuracy.py` on {machine}. {a['rows']} measured "
        f"runs from {a['sources']} sources (benchmarks/data/). Errors are predicted minus "
        "measured, over measured; each source is predicted with constants fitted on the "
        "other sources. Columns: runs on transformers + PEFT + bitsandbytes (the stack "
        f"tunebench trains with; {h['sources']} sources), all runs whose settings the "
        "estimator models, and every run (the last column of the table below says what a "
        "run did that is not modelled). Goals are judged on the first column.",
        "",
        f"| figure | transformers + PEFT ({h['rows']}) | modelled ({m['rows']}) | "
        f"all ({a['rows']}) | goal |",
        "|---|---|---|---|---|",
        f"| mean absolute error, peak memory | {cells('mape')} | <= 10%: "
        f"{goal(h['mape'] <= GOALS['mape'])} |",
        f"| max absolute error, peak memory | {cells('max_ape')} | |",
        f"| rows under-predicted by more than 10% (OOM risk) | {cells('under10')} | <= 5%: "
        f"{goal(h['under10'] <= GOALS['under10'])} |",
        f"| fit / does-not-fit right at {'/'.join(map(str, CAPACITIES_GB))} GB | "
        f"{cells('verdicts')} | >= 95%: {goal(h['verdicts'] >= GOALS['verdicts'])} |",
        f"| rows with a step time of fixed-length batches | {cells('time_rows', '{}')} | |",
        f"| step time, mean absolute error | {cells('time_mape')} | <= 25%: "
        + (goal(h["time_mape"] <= GOALS["time_mape"]) if h["time_mape"] is not None else "")
        + " |",
        f"| reserved memory where allocated was compared | {cells('reserved_mape')} | |",
        "",
        "## By source",
        "",
        *by_source(table),
        "",
        "## Constants fitted without each source",
        "",
        "| held-out source | unattributed | allocator overhead | workspace GiB | CUDA context GiB "
        "| matmul efficiency | step overhead s | layer overhead s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source, (mem, speed) in constants.items():
        lines.append(
            f"| {source} | {mem.unattributed:.2f} | {mem.allocator_overhead:.2f} | "
            f"{mem.workspace_gib:.2f} | "
            f"{mem.context_gib:.1f} | {speed.matmul_efficiency:.3f} | "
            f"{speed.step_overhead_s} | {speed.layer_overhead_s} |"
        )
    lines += [
        "",
        "## Every row",
        "",
        "| row | compared | measured GiB | predicted GiB | error % | step s measured | "
        "predicted | not modelled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        step = (
            f"{t['measured_step_s']:.3f} | {t['predicted_step_s']:.3f}"
            if t["predicted_step_s"]
            else " | "
        )
        lines.append(
            f"| {t['row_id']} | {t['compared']} | {t['measured_gib']:.2f} | "
            f"{t['predicted_gib']:.2f} | {t['error_pct']:+.1f} | {step} | "
            f"{t['not_modelled']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="print constants fitted on all rows")
    parser.add_argument("--out", default=str(FIGURES))
    args = parser.parse_args()
    from tunebench.measure import measured_on

    rows = published_rows() + h200_rows()
    predict_all(rows)
    constants = held_out(rows)
    table, summary = summarise(rows, constants)
    text = report(table, summary, constants, measured_on())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "estimator_accuracy.md").write_text(text)
    with (out / "estimator_accuracy.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    print(text)
    if args.fit:
        mem, speed = fit_memory(rows), fit_speed(rows)
        print(f"fitted on all rows: {mem}\n{speed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
