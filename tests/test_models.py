"""Loading real models: a local folder, and a hub id resolved through the HF cache offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tunebench import models
from tunebench.spec import ModelSpec

LOAD_BY_HUB_ID = """
import json, sys, torch
from tunebench import models
from tunebench.spec import ModelSpec
spec = ModelSpec(name="hubby", hub=sys.argv[1], revision="main")
tok = models.load_tokenizer(spec, models.model_location(spec, None))
model = models.load_base_model(spec, spec.hub, torch.float32)
print(json.dumps({"vocab": len(tok), "params": sum(p.numel() for p in model.parameters())}))
"""


def fake_hub_cache(cache, repo_id: str, model_dir) -> None:
    """Lay a saved model out exactly as huggingface_hub caches a download."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_loads_from_the_cache_offline(tiny_model, tmp_path):
    """The real hub code path (from_pretrained with a repo id and revision), served offline."""
    _, model_dir = tiny_model
    fake_hub_cache(tmp_path / "hub", "tunebench-test/tiny-llama", model_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = subprocess.run(
        [sys.executable, "-c", LOAD_BY_HUB_ID, "tunebench-test/tiny-llama"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["vocab"] == 320 and loaded["params"] > 10_000


def test_unknown_hub_id_fails_fast_with_a_clear_message():
    spec = ModelSpec(name="ghost", hub="nobody/does-not-exist")
    with pytest.raises(models.ModelNotFound, match="HF_HUB_OFFLINE=1 is set"):
        models.load_tokenizer(spec, spec.hub)


def test_local_folder(tiny_model):
    _, model_dir = tiny_model
    spec = ModelSpec(name="local", path=str(model_dir))
    location = models.model_location(spec, None)
    assert models.load_tokenizer(spec, location).pad_token is not None


def test_missing_local_folder_names_the_field(tmp_path):
    spec = ModelSpec(name="gone", path=str(tmp_path / "nothing"))
    with pytest.raises(models.ModelNotFound, match=r"models\[\]\.path must be a folder"):
        models.model_location(spec, None)
