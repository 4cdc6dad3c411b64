"""`tunebench export` on real tiny runs of every method: merged, converted by llama.cpp's own
converter (fetched from the registry once), loaded back with transformers and checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
import torch
import yaml
from conftest import tiny_experiment
from helpers import METHODS, run_for
from safetensors.torch import load_file

from tunebench import cli, stages
from tunebench.export import modelfile
from tunebench.export import run as export
from tunebench.export.convert import ConversionError, convert, is_gpt2_byte_level
from tunebench.io import read_json
from tunebench.matrix import dataset_key
from tunebench.spec import Tracking

pytestmark = pytest.mark.slow
EXPORTED = ("full", "lora", "dora", "rslora", "qlora")
STEPS = 8
# Gentler than test_training's rates: a few steps at 1e-2 leave the tiny model torn between
# "</s>" and "." at prompt positions every example shares (margins under q8_0's rounding), so
# one near-tie moves q8_0's agreement by 1/32 at once. At 3e-3 under 2.1% of positions are that
# close, here.
LEARNING_RATE = 3e-3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: this model is so small that a second one only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_data) -> Path:
    """A folder laid out as a project: results/tiny/ with the prepared dataset."""
    spec, data, _ = tiny_data
    root = tmp_path_factory.mktemp("export")
    shutil.copytree(data, root / "results" / "tiny" / "data" / dataset_key(spec))
    (root / "experiment.yaml").write_text(yaml.safe_dump(tiny_experiment()))
    return root


@pytest.fixture(scope="module")
def trained(workdir, tiny_model, tiny_data):
    """Train each method once (a few real steps), on first use: {method: run directory}."""
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    runs: dict[str, Path] = {}

    def get(method: str, **changes) -> Path:
        key = method + repr(sorted(changes.items()))
        if key not in runs:
            run = run_for(METHODS[method] | {"learning_rate": LEARNING_RATE}, max_steps=STEPS)
            run = run.model_copy(update=changes) if changes else run
            run_dir = workdir / "results" / "tiny" / "runs" / run.run_id
            # As the workflow lays a run out: runs/<id>/train/result.json and runs/<id>/model.
            stages.train(
                run=run,
                tokenized=tokenized,
                run_dir=run_dir,
                result=run_dir / "train" / "result.json",
                tracking=Tracking(),
                model_dir=model_dir,
                threads=1,
            )
            runs[key] = run_dir
        return runs[key]

    return get


def _export(method, run_dir, workdir, monkeypatch, capsys) -> tuple[dict, Path]:
    out = workdir / "results" / "tiny" / "exports" / "runs" / run_dir.name
    if method == "full":  # through the command line, from the project folder
        monkeypatch.chdir(workdir)
        code = cli.main(["export", "experiment.yaml", "--run", run_dir.name])
        printed = capsys.readouterr().out
        assert code == 0, printed
        assert f"exported run {run_dir.name}" in printed and "check: passed" in printed
        assert "q8_0: max |logit diff|" in printed
        return read_json(out / "manifest.json"), out
    return export.export_run(run_dir), out


@pytest.mark.parametrize("method", EXPORTED)
def test_export_round_trip(method, trained, workdir, tiny_model, monkeypatch, capsys):
    run_dir = trained(method)
    assert read_json(run_dir / "train" / "result.json")["status"] == "ok"
    manifest, out = _export(method, run_dir, workdir, monkeypatch, capsys)
    check = manifest["check"]
    print(method, export.describe_check(check))
    assert manifest == read_json(out / "manifest.json")
    assert check["passed"] is True and check["prompts"] == export.MAX_PROMPTS

    # The figures: f16 is the merged model up to half-precision rounding; q8_0 picks the same
    # next token almost everywhere.
    f16, q8 = check["gguf"]["f16"], check["gguf"]["q8_0"]
    assert 0 < f16["max_abs_logit_diff"] < 0.05 and f16["mean_abs_logit_diff"] < 0.005
    assert f16["greedy_agreement"] >= 0.99
    assert q8["greedy_agreement"] >= 0.95 and q8["max_abs_logit_diff"] > f16["max_abs_logit_diff"]
    assert f16["positions"] == q8["positions"] > export.MAX_PROMPTS * 5  # distinct contexts
    assert f16["tokenizer_reread_agreement"] == 1.0

    # What was merged, and into what.
    run = manifest["run"]
    assert run["run_id"] == run_dir.name and run["method"] == method
    assert run["train_result_sha256"] == export.sha256_file(run_dir / "train" / "result.json")
    _, base_dir = tiny_model
    assert manifest["base_model"] == {"location": str(base_dir), "import": None}
    if method == "full":
        assert manifest["merged_into"] is None and "merge" not in check
        assert "model.safetensors" in run["model_files"]
    else:
        assert "adapter_model.safetensors" in run["model_files"]
        assert manifest["merged_into"]["location"] == str(base_dir)
        merge = check["merge"]
        # The merged model is the model evaluation scored: for QLoRA, the 4-bit base + adapter
        # (the adapter is merged into the 4-bit values dequantised, not the original weights).
        assert merge["passed"] is True and merge["max_abs_logit_diff"] < 1e-3
        if method == "qlora":
            assert manifest["merged_into"]["trained_against"].startswith("4-bit nf4")
            assert "dequantised to float32" in manifest["merged_into"]["note"]
            assert merge["reference"].startswith("the 4-bit")
    # The merge really changed the weights.
    merged = load_file(out / "merged" / "model.safetensors")
    base = load_file(base_dir / "model.safetensors")
    assert set(merged) == set(base)
    assert any(not merged[k].equal(base[k]) for k in base)

    # The GGUF files: as recorded, with the tokenizer and the Jinja chat template.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    assert (out / "merged" / "chat_template.jinja").is_file()
    for entry in manifest["gguf"]:
        path = out / entry["file"]
        assert entry["file"] == f"{run_dir.name}.{entry['type']}.gguf"
        assert entry["sha256"] == export.sha256_file(path) and entry["bytes"] > 0
        reader = gguf.GGUFReader(path)
        assert reader.get_field("tokenizer.chat_template").contents() == tokenizer.chat_template
        assert reader.get_field("tokenizer.ggml.model").contents() == "gpt2"
        assert reader.get_field("tokenizer.ggml.pre").contents() == "gpt-2"
        tokens = reader.get_field("tokenizer.ggml.tokens").contents()
        assert tokens == [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]
        assert reader.get_field("general.name").contents() == run_dir.name
        assert entry["metadata"]["problems"] == []
    kinds = {e["type"]: gguf.GGUFReader(out / e["file"]) for e in manifest["gguf"]}
    weight = "blk.0.attn_q.weight"
    types = {
        k: next(t for t in r.tensors if t.name == weight).tensor_type for k, r in kinds.items()
    }
    assert types == {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}

    # The converter as pinned, and the versions.
    converter = manifest["converter"]
    assert converter["package"] == "llama-cpp-python" and converter["version"] == "0.3.36"
    assert converter["sdist_sha256"] == export.convert.SDIST_SHA256
    assert len(converter["llama_cpp_commit"]) == 40 and converter["llama_cpp_version"]
    assert "llama-quantize" in manifest["not_offered"]
    # The built-in tokenizer's hash is unknown to the converter: named "gpt-2" by the wrapper.
    assert converter["gpt2_pre_tokenizer_assumed"] is True
    assert "using 'gpt-2'" in (out / "convert.log").read_text()
    assert manifest["versions"]["gguf"] and manifest["versions"]["transformers"]

    # The Modelfile: FROM the q8_0 file, the chat template as a Go template, EOS as a stop.
    parsed = modelfile.parse_modelfile((out / "Modelfile").read_text())
    assert parsed["FROM"] == f"./{run_dir.name}.q8_0.gguf" and (out / parsed["FROM"]).is_file()
    assert ("stop", tokenizer.eos_token) in parsed["PARAMETER"]
    template = parsed["TEMPLATE"]
    assert "{%" not in template and "{{ .Prompt }}" in template and "{{ .System }}" in template
    for system in ("", "Be brief."):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": "Write the word k a t o backwards."})
        jinja = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        go = modelfile.render_go(template, system, messages[-1]["content"], "o t a k")
        assert go == jinja + "o t a k" + tokenizer.eos_token
    assert manifest["modelfile"]["template"] == template


def test_a_failed_run_is_refused_and_nothing_is_written(workdir, trained, monkeypatch, capsys):
    run_dir = trained("lora", learning_rate=1e30)  # the loss becomes non-finite: a real failure
    result = read_json(run_dir / "train" / "result.json")
    assert result["status"] == "failed"
    exports = workdir / "results" / "tiny" / "exports" / "runs"
    before = sorted(exports.iterdir()) if exports.exists() else []
    with pytest.raises(export.RunNotExportable) as err:
        export.export_run(run_dir)
    assert run_dir.name in str(err.value) and "'failed'" in str(err.value)
    assert result["reason"].splitlines()[0] in str(err.value)
    assert (sorted(exports.iterdir()) if exports.exists() else []) == before

    monkeypatch.chdir(workdir)
    assert cli.main(["export", "experiment.yaml", "--run", run_dir.name]) == 1
    assert run_dir.name in capsys.readouterr().err
    assert cli.main(["export", "experiment.yaml", "--run", "no-such-run"]) == 1
    assert "no such run" in capsys.readouterr().err


def test_a_failing_export_leaves_the_previous_one_alone(trained, tiny_model, tmp_path):
    run_dir = trained("lora")
    out = tmp_path / "export"
    out.mkdir()
    (out / "manifest.json").write_text('{"truncated": ')  # a damaged earlier export
    (out / f"{run_dir.name}.q8_0.gguf").write_bytes(b"GGUF\x00")
    previous = {p.name: p.read_bytes() for p in out.iterdir()}

    # A bar no quantised file can reach: the check runs for real and fails.
    with pytest.raises(export.ExportCheckFailed) as err:
        export.export_run(run_dir, out=out, types=["q8_0"], min_agreement={"q8_0": 1.01})
    assert "q8_0: max |logit diff|" in str(err.value) and "FAILED" in str(err.value)
    assert err.value.manifest["check"]["passed"] is False
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary left

    # Unknown or k-quant types are refused before anything is done.
    with pytest.raises(export.ExportError, match="llama-quantize"):
        export.export_run(run_dir, out=out, types=["q4_k_m"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous

    # A successful export replaces it whole. (This one of a copy of the run whose base came
    # from a GGUF import: the import's record travels into the manifest.)
    base = tmp_path / "imported-base"
    shutil.copytree(tiny_model[1], base)
    imported = {"gguf": "model.Q8_0.gguf", "sha256": "0" * 64}
    (base / "import.json").write_text(json.dumps(imported))
    copy = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)
    result = read_json(copy / "train" / "result.json") | {"base_model": str(base)}
    (copy / "train" / "result.json").write_text(json.dumps(result))
    manifest = export.export_run(copy, out=out, types=["f16"], check=False)
    assert manifest["base_model"] == {"location": str(base), "import": imported}
    assert manifest["merged_into"]["location"] == str(base)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["convert.log", "manifest.json", "Modelfile", "merged", f"{run_dir.name}.f16.gguf"]
    )
    assert read_json(out / "manifest.json")["check"] == {"skipped": True}


def _tokenizer_with(tokenizer, **changes):
    """The tokenizer with parts of its tokenizer.json replaced."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    for key, value in changes.items():
        spec[key] = value
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))


def test_only_gpt2s_own_byte_level_bpe_is_named_gpt2(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model[1])
    assert is_gpt2_byte_level(tokenizer)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    others = {
        "prefix space": {
            "pre_tokenizer": byte_level | {"add_prefix_space": True, "use_regex": True}
        },
        "no regex": {"pre_tokenizer": byte_level | {"use_regex": False}},
        "digits split": {
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Digits", "individual_digits": True},
                    byte_level | {"use_regex": True},
                ],
            }
        },
        "a normaliser": {"normalizer": {"type": "NFKC"}},
    }
    for name, changes in others.items():
        assert not is_gpt2_byte_level(_tokenizer_with(tokenizer, **changes)), name


def test_any_other_unknown_tokenizer_gets_the_converters_own_error(tiny_model, tmp_path):
    """The wrapper names nothing but GPT-2's byte-level BPE: with a prefix space, the built-in
    tokenizer is unknown to the converter, which refuses it as it would without tunebench."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model[1], model_dir)
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    (model_dir / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConversionError, match="BPE pre-tokenizer was not recognized"):
        convert(model_dir, {"f16": tmp_path / "x.gguf"})
    assert not (tmp_path / "x.gguf").exists()
