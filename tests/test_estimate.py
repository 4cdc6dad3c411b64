"""The estimator against real tensors: parameter, gradient, optimizer-state and 4-bit storage
terms are exact counts, checked on the tiny model as training builds it; saved activations are
checked against a real forward pass on this CPU; then the command line, job sizing and the
`predicted_oom` row."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, tiny_experiment

from tunebench import models
from tunebench.estimate import EstimateError, Setup, estimate, verdict
from tunebench.estimate.gpus import find
from tunebench.estimate.memory import GIB, logits_bytes, quantization_bytes
from tunebench.estimate.setup import from_run
from tunebench.experiment import validate_data
from tunebench.matrix import expand

METHODS = {
    "full": {"method": "full"},
    "lora": {"method": "lora", "ranks": [4]},
    "dora": {"method": "dora", "ranks": [4]},
    "rslora": {"method": "rslora", "ranks": [8], "target_modules": ["q_proj", "v_proj"]},
    "qlora": {
        "method": "qlora",
        "ranks": [4],
        "quantization": {"quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"},
    },
}


def run_for(method: dict, **training):
    exp = tiny_experiment(methods=[method])
    exp["training"].update({"precision": "float32", **training})
    (run,) = expand(validate_data(exp))
    return run


def real_model(run, model_dir: Path):
    """The model as train.py builds it (load in the training dtype, prepare, PEFT)."""
    from peft import get_peft_model

    quant = None
    dtype = models.training_dtype(run.training.precision)
    if run.method == "qlora":
        quant = models.quantization_config(run.quant_type, run.double_quant, run.compute_dtype)
        dtype = models.DTYPES[run.compute_dtype]
    model = models.load_base_model(run.model, str(model_dir), dtype, quant)
    model, peft_config = models.prepare_for_method(run, model, gradient_checkpointing=False)
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
    model.train()
    return model


def saved_bytes(model, ids, autocast: bool) -> int:
    """What autograd saves in a real forward pass and still holds at its end."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params and (key not in saved or saved[key][0]() is None):
            saved[key] = (weakref.ref(t), t.untyped_storage().nbytes())
        return t

    context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with context, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids, use_cache=False).logits
    alive = sum(n for ref, n in saved.values() if ref() is not None)
    del logits
    return alive


@pytest.mark.parametrize("method", list(METHODS))
def test_parameter_gradient_and_optimizer_terms_are_exact(method, tiny_model):
    spec, model_dir = tiny_model
    run = run_for(METHODS[method])
    config = __import__("transformers").AutoConfig.from_pretrained(model_dir)
    setup = from_run(run, device="cpu")
    predicted = estimate(config, setup)
    fp, mem = predicted.footprint, predicted.memory

    model = real_model(run, model_dir)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert fp.trainable_params == sum(p.numel() for p in trainable)
    assert mem.trainable_parameters == sum(p.numel() * p.element_size() for p in trainable)
    assert fp.total_params == models.count_parameters(model)[1]

    ids = torch.randint(3, config.vocab_size, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    assert mem.gradients == sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    optimizer.step()
    states = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for name, t in state.items()
        if name != "step"  # one scalar per tensor
    )
    assert mem.optimizer_states == states

    if method == "qlora":
        import bitsandbytes as bnb

        layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        stored = sum(m.weight.numel() * m.weight.element_size() for m in layers)
        constants = sum(
            m.weight.quant_state.absmax.nbytes + m.weight.quant_state.state2.absmax.nbytes
            for m in layers
        )
        storage, predicted_constants = quantization_bytes(setup, fp.quantized_params)
        assert storage == stored
        # Blocks of 64 weights, one 8-bit absmax each, one float32 per 256 blocks (rounded
        # up per layer in bitsandbytes).
        assert abs(predicted_constants - constants) <= 4 * len(layers)


@pytest.mark.parametrize("method", ["full", "lora", "dora", "qlora"])
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_traced_activations_match_a_real_forward_pass(method, autocast, tiny_model):
    if autocast and method == "qlora":
        pytest.skip("tunebench trains QLoRA without autocast")
    spec, model_dir = tiny_model
    run = run_for(METHODS[method], precision="bfloat16" if autocast else "float32")
    config = __import__("transformers").AutoConfig.from_pretrained(model_dir)
    setup = from_run(run, device="cpu")
    batch, length = 2, 48
    # A real padded batch would carry a mask; without one both sides take the same path.
    setup = Setup(
        **{
            **setup.__dict__,
            "batch_size": batch,
            "seq_len": length,
            "padding_free": True,
            "compute_dtype": "bfloat16" if autocast else "float32",
        }
    )
    traced = estimate(config, setup).footprint.saved_bytes

    model = real_model(run, model_dir)
    if method != "full":
        model.enable_input_require_grads()
    real = saved_bytes(model, torch.randint(3, config.vocab_size, (batch, length)), autocast)
    print(f"{method} autocast={autocast}: traced {traced} bytes, real {real}")
    assert traced == pytest.approx(real, rel=0.02), (traced, real)


def test_logits_and_verdicts():
    setup = Setup("lora", rank=8, batch_size=2, seq_len=10)

    class Fp:
        vocab_size = 100

    assert logits_bytes(setup, Fp) == 12 * 2 * 10 * 100
    assert logits_bytes(Setup("lora", rank=8, loss="fused"), Fp) == 0
    gpu = find("A100-80GB")
    assert verdict(10 * GIB, gpu) == "fits"
    assert verdict(75 * GIB, gpu) == "tight"
    assert verdict(81 * GIB, gpu) == "does not fit"
    assert find("NVIDIA A100-SXM4-40GB").memory_gib == 40
    assert find("mine:12").memory_gib == 12
    with pytest.raises(KeyError, match="unknown GPU"):
        find("B9000")


def test_settings_it_cannot_model_are_said():
    with pytest.raises(EstimateError, match="training.optimizer 'lion_32bit'"):
        Setup("full", optimizer="lion_32bit")
    config = __import__("transformers").LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=100,
    )
    with pytest.raises(EstimateError, match="target_modules"):
        estimate(config, Setup("lora", rank=4, target_modules=("c_attn",)))


def test_published_data_carry_their_sources():
    data = REPO / "benchmarks" / "data"
    rows = list(csv.DictReader((data / "published_memory.csv").open()))
    from tunebench.estimate import architectures

    archs = architectures.known()
    assert len(rows) >= 40 and len({r["source"] for r in rows}) >= 5
    for row in rows:
        assert row["source_location"] and row["architecture"] in archs, row["row_id"]
        assert float(row["measured_peak_gb"]) > 0
    for name in ("h200_measurements.json", "h200_held_out.json"):
        h200 = json.loads((data / name).read_text())
        assert h200["gpu"] == "NVIDIA H200" and len(h200["rows"]) >= 6
        assert all(r["architecture"] in archs for r in h200["rows"])


def cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "tunebench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_estimate_command(tmp_path):
    # From an empty folder: in the repository, a finished `make run` leaves results/smoke, whose
    # tokenised data the estimate then measures instead of predicting (DPO's pairs are not then
    # exactly twice the SFT run's tokens).
    smoke = str(REPO / "experiments" / "smoke.yaml")
    out = cli("estimate", smoke, "--gpu", "A100-80GB", "--gpu", "T4", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)["runs"]
    assert len(records) == 7
    # DPO runs each pair's chosen and rejected sequences: twice the SFT run's activations.
    sft = next(r for r in records if r["run_id"].startswith("tiny-m-lora-r8-wordops"))
    dpo = next(r for r in records if "-dpo-" in r["run_id"])
    assert dpo["memory_gib"]["activations"] == pytest.approx(
        2 * sft["memory_gib"]["activations"], rel=0.01
    )
    assert dpo["memory_gib"]["weights"] == sft["memory_gib"]["weights"]  # LoRA: no second copy
    for r in records:
        terms = r["memory_gib"]
        assert terms["peak_reserved"] > terms["peak_allocated"] > terms["activations"] > 0
        assert set(r["gpus"]) == {"A100-80GB", "T4"}
        assert r["gpus"]["A100-80GB"]["verdict"] == "fits"
    bad = cli("estimate", "experiments/smoke.yaml", "--gpu", "B9000")
    assert bad.returncode == 2 and "unknown GPU 'B9000'" in bad.stderr
    table = cli("estimate", "experiments/smoke.yaml")
    assert table.returncode == 0 and "tiny-m-qlora-r8-nf4" in table.stdout
    # A hub model with the hub out of reach (HF_HUB_OFFLINE=1): the table of known models.
    gpu_example = cli("estimate", "experiments/examples/llama-3.2-1b-methods.yaml", "--json")
    assert gpu_example.returncode == 0, gpu_example.stderr
    records = json.loads(gpu_example.stdout)["runs"]
    for r in records:
        assert "error" not in r and r["config_source"].startswith("known models table"), r
    full = next(r for r in records if "-full-" in r["run_id"])
    assert full["total_params"] == 1_235_814_400  # Llama-3.2-1B, tied embeddings


def test_auto_resources_pick_the_smallest_gpu_class_that_fits():
    from tunebench.resources import predicted_oom_limit_gb, snakemake_resources

    exp = validate_data(
        tiny_experiment(
            resources={
                "train": "auto",
                "auto": {
                    "gpus": [
                        {"slurm": "big", "gpu": "A100-80GB"},
                        {"slurm": "crumb", "gpu": "crumb:0.01"},
                        {"slurm": "small", "gpu": "small:2"},
                    ]
                },
                "predicted_oom": "skip",
            }
        )
    )
    run = expand(exp)[0]
    asked = snakemake_resources(exp, "train", run.axes(), run)
    assert asked["gpu"] == 1 and asked["gpu_model"] == "small"
    assert asked["runtime"] >= 15 and asked["mem_mb"] >= 8 * 1024
    assert predicted_oom_limit_gb(exp) == 80


def test_predicted_oom_needs_a_gpu_size():
    from tunebench.experiment import ExperimentError

    with pytest.raises(ExperimentError, match="predicted_oom: skip needs"):
        validate_data(tiny_experiment(resources={"predicted_oom": "skip"}))


def test_a_run_predicted_not_to_fit_is_a_row_not_a_job(tiny_model, tiny_data, tmp_path):
    from tunebench import stages
    from tunebench.spec import Tracking

    spec, model_dir = tiny_model
    _, _, tokenized = tiny_data
    run = run_for(METHODS["lora"])
    result = stages.train(
        run=run,
        tokenized=tokenized,
        run_dir=tmp_path,
        result=tmp_path / "result.json",
        tracking=Tracking(),
        model_dir=model_dir,
        predicted_oom_mb=1,
    )
    assert result["status"] == "predicted_oom"
    assert "resources.gpu_memory_gb" in result["reason"] and result["predicted_peak_gb"] > 0
    assert not (tmp_path / "model").exists() and not (tmp_path / "checkpoints").exists()


def test_full_fine_tuning_dpo_counts_its_reference_copy(tmp_path):
    """DPOTrainer keeps a frozen copy of the starting weights for full fine-tuning."""
    methods = [{"method": "full", "objective": ["sft", "dpo"]}]
    datasets = [{"name": "pairs", "builtin": "wordops", "format": "preference"}]
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment(methods=methods, datasets=datasets)))
    out = cli("estimate", str(path), "--json")
    assert out.returncode == 0, out.stderr
    sft, dpo = sorted(json.loads(out.stdout)["runs"], key=lambda r: "-dpo-" in r["run_id"])
    extra = dpo["memory_gib"]["weights"] - sft["memory_gib"]["weights"]
    assert extra == pytest.approx(sft["memory_gib"]["trainable_parameters"]) and extra > 0


def test_the_estimate_is_for_the_longest_batch_of_the_tokenised_data(tmp_path, monkeypatch):
    """Once the data are tokenised, a run is estimated at its longest training example where
    that is shorter than max_length (a batch is padded to its longest row); before, and with
    packing, at max_length."""
    import json

    from tunebench.estimate.gpus import find
    from tunebench.estimate.runs import estimate_experiment, tokenized_dir

    monkeypatch.chdir(tmp_path)
    settings = tiny_experiment(methods=[{"method": "lora", "ranks": [4], "learning_rate": 5e-3}])
    settings["training"]["max_length"] = 256
    exp = validate_data(settings)
    (run,) = expand(exp)
    before = estimate_experiment(exp, [run], [find("L40S")])[0]
    assert before["seq_len"] == 256
    manifest = tokenized_dir(exp, run) / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"splits": {"train": {"max_tokens": 40}}}))
    after = estimate_experiment(exp, [run], [find("L40S")])[0]
    assert after["seq_len"] == 40
    assert after["memory_gib"]["activations"] < before["memory_gib"]["activations"]
    settings["training"]["packing"] = True  # packed rows are max_length long whatever the data
    packed = validate_data(settings)
    (packed_run,) = expand(packed)
    assert estimate_experiment(packed, [packed_run], [find("L40S")])[0]["seq_len"] == 256
