"""The GPU check (benchmarks/gpu_check.py) and its staged packages (benchmarks/gpu_wheels.py):
the chunks fit one call's carry limit, the package set is what the GPU machine lacks, and the
whole check runs end to end on a CPU in its dry mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_experiment

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_wheels  # noqa: E402

MIB = 2**20


def fake_distribution(site: Path, name: str, files: dict[str, int], seed: int = 0) -> None:
    """An installed distribution under `site`: its files (random bytes: incompressible, so
    the packed size is known) and a dist-info whose RECORD lists them."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    record = [f"{info.name}/METADATA,,"]
    for path, size in sorted(files.items()):
        target = site / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(os.urandom(size) if size else b"")
        record.append(f"{path},sha256=x,{size}")
    record.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def test_chunks_stay_under_the_limit_and_install_back(tmp_path):
    site = tmp_path / "site"
    fake_distribution(site, "alpha", {"alpha/__init__.py": 0, "alpha/big.bin": 3 * MIB})
    fake_distribution(site, "beta", {"beta/__init__.py": 0, "beta/data.bin": 2 * MIB})
    fake_distribution(site, "gamma", {"gamma/x.bin": 2 * MIB})
    out = tmp_path / "staged"
    limit = int(4.2 * MIB)  # xz adds a little to random bytes
    packed = gpu_wheels.pack(site, gpu_wheels.distributions(site), out, limit=limit)
    chunks = sorted(out.glob("chunk-*"))
    assert len(chunks) == 2  # 3 + 2 + 2 MiB in chunks of 4.2: alpha alone, beta with gamma
    for chunk in chunks:
        assert sum(f.stat().st_size for f in chunk.iterdir()) <= limit
    assert sorted(e["package"] for e in packed) == ["alpha", "beta", "gamma"]
    back = tmp_path / "back"
    for archive in sorted(out.glob("chunk-*/*.tar.xz")):
        with tarfile.open(archive) as tar:
            tar.extractall(back, filter="data")
    for path in ("alpha/big.bin", "beta/data.bin", "gamma/x.bin"):
        assert (back / path).read_bytes() == (site / path).read_bytes()


def test_a_package_over_the_limit_is_named(tmp_path):
    site = tmp_path / "site"
    fake_distribution(site, "huge", {"huge/blob.bin": 2 * MIB})
    with pytest.raises(SystemExit, match="huge packs to 2.0 MiB, over the limit"):
        gpu_wheels.pack(site, gpu_wheels.distributions(site), tmp_path / "out", limit=MIB)


def test_a_chunk_travels_beside_the_checkout_within_one_calls_limit():
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    checkout = sum((REPO / p.decode()).stat().st_size for p in tracked if p)
    assert checkout + gpu_wheels.DEFAULT_LIMIT_MIB * MIB <= gpu_wheels.CARRY_LIMIT_MIB * MIB


def test_only_libraries_the_gpu_cannot_load_are_dropped(tmp_path):
    site = tmp_path / "site"
    libs = ["cpu", "cuda121", "cuda128", "cuda130", "cuda132", "rocm64", "xpu2025"]
    files = {f"bitsandbytes/libbitsandbytes_{v}.so": 10 for v in libs}
    fake_distribution(site, "bitsandbytes", files | {"bitsandbytes/__init__.py": 0})
    dists = gpu_wheels.distributions(site)
    dropped = gpu_wheels.drop_unusable(site, dists)
    kept = sorted(p.name for p in (site / "bitsandbytes").glob("*.so"))
    assert kept == [f"libbitsandbytes_{v}.so" for v in ("cpu", "cuda130", "cuda132")]
    assert dropped["bitsandbytes"]["files"] == 4
    assert not any("cuda121" in f for f in dists["bitsandbytes"]["files"])


def test_the_staged_set_is_what_the_gpu_image_lacks():
    names = gpu_wheels.needed(gpu_wheels.lock_pins(), gpu_wheels.image_packages())
    for wanted in ("trl", "bitsandbytes", "snakemake", "pydantic", "datasets", "peft"):
        assert wanted in names
    for provided in ("torch", "transformers", "numpy", "pandas", "accelerate", "triton"):
        assert provided not in names  # the image's (its versions are recorded by the check)
    assert not [n for n in names if n.startswith(("nvidia-", "cuda-"))]
    assert "wandb" not in names and "lm-eval" not in names


def test_the_lock_is_read_with_its_hashes():
    pins = gpu_wheels.lock_pins()
    version, hashes = pins["trl"]
    assert version.count(".") >= 1 and hashes and all(h.startswith("sha256:") for h in hashes)


@pytest.mark.slow
def test_the_check_runs_end_to_end_on_a_cpu_in_dry_mode(tmp_path):
    """The check's steps at a CPU's size, with a staged chunk installed first: each writes its
    file, says DRY, and names no path of this machine. The methods and preset steps are left
    out: their runs are test_preflight's and test_reproduce's resources mode, and their pages
    are the preflight step's code (methods) or a copy of the reproduction table (preset)."""
    site = tmp_path / "fake-site"
    fake_distribution(site, "gpucheck-probe", {"gpucheck_probe/__init__.py": 0})
    staged = tmp_path / "staged"
    gpu_wheels.pack(site, gpu_wheels.distributions(site), staged, limit=MIB)
    experiment = tmp_path / "default.yaml"
    settings = tiny_experiment(name="gpu-dry")
    settings["methods"] = settings["methods"][:1]
    settings["training"]["max_steps"] = 3
    experiment.write_text(yaml.safe_dump(settings))
    out, work = tmp_path / "out", tmp_path / "work"
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry"]
    command += ["--out", str(out), "--work", str(work), "--site", str(tmp_path / "site")]
    command += ["--wheels", str(staged), "--default-experiment", str(experiment)]
    command += ["--only", "default,preflight,unsloth,retention"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    outcomes = json.loads((out / "gpu_check.json").read_text())
    assert {k: v["status"] for k, v in outcomes.items()} == {
        "environment": "ok",
        "default": "ok",
        "preflight": "ok",
        "unsloth": "skipped",
        "retention": "ok",
    }, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0
    for step in outcomes:
        text = (out / f"gpu_{step}.md").read_text()
        assert "DRY RUN on a CPU" in text
        assert str(work) not in text and str(tmp_path) not in text
    assert "installed chunk-1: 1 packages" in (out / "gpu_environment.md").read_text()
    # The preflight's own report, then the estimate that reads its calibration.
    text = (out / "gpu_preflight.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| any | ")]
    assert rows and all("| ok | 0." in row for row in rows), text
    assert "## `tunebench estimate` after the preflight" in text
    assert "error:" not in text.split("after the preflight")[1], text
    retention = (out / "gpu_retention.md").read_text()
    assert "Forgetting per unit of gain" in retention and "runs trained on: cpu" in retention
    with tarfile.open(out / "gpu_logs.tar.gz") as tar:
        assert any(n.endswith("train/result.json") for n in tar.getnames())
