"""The hash-locked environments (containers/locks/) agree with pyproject.toml, pin every package
with hashes, and this test environment is the locked one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

import pytest
from conftest import REPO
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

from tunebench.envs import locks
from tunebench.io import sha256_file

LOCK_DIR = REPO / "containers" / "locks"
BIN = REPO / ".venv" / "bin"
# `compile NAME PYTHON EXTRAS TORCH ...` lines of containers/lock.sh: the one list of locks.
COMPILES = re.findall(
    r"^compile (\S+) (\S+) (\S+) (\S+)", (REPO / "containers" / "lock.sh").read_text(), re.M
)
LOCKS = {name: (python, extra, torch) for name, python, extra, torch in COMPILES}


def requirement_blocks(text: str) -> list[str]:
    """One string per requirement: its line and the continuation lines (hashes)."""
    blocks, current = [], None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith(" "):
            assert current is not None, f"continuation without a requirement: {line!r}"
            current.append(line)
        else:
            current = [line]
            blocks.append(current)
    return ["\n".join(b) for b in blocks]


def test_lock_script_lists_both_stacks_in_both_torch_builds():
    assert set(LOCKS) == {"hf-cpu", "hf-cuda", "unsloth-cpu", "unsloth-cuda"}
    assert sorted(p.stem for p in LOCK_DIR.glob("*.txt")) == sorted(LOCKS)


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_pin_is_exact_and_hashed(name):
    blocks = requirement_blocks((LOCK_DIR / f"{name}.txt").read_text())
    assert len(blocks) > 50
    for block in blocks:
        first = block.splitlines()[0]
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+ \\$", first), first
        hashes = re.findall(r"--hash=sha256:([0-9a-f]+)", block)
        assert hashes and all(len(h) == 64 for h in hashes), f"{name}: {first} lacks hashes"


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_lock_satisfies_pyproject(name):
    """Each dependency pyproject declares for this stack is pinned at a version it allows."""
    python, extras, torch_build = LOCKS[name]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras.split(","):
        wanted += project["optional-dependencies"][extra]
    pins = locks.lock_pins((LOCK_DIR / f"{name}.txt").read_text())
    environment = {"python_version": python, "sys_platform": "linux", "platform_machine": "x86_64"}
    problems = []
    for line in wanted:
        req = Requirement(line)
        if req.marker and not Marker(str(req.marker)).evaluate(environment):
            continue
        pinned = pins.get(locks.normalise(req.name))
        if pinned is None:
            problems.append(f"{req.name} missing")
        elif not req.specifier.contains(Version(pinned), prereleases=True):
            problems.append(f"{req.name}=={pinned} outside {req.specifier}")
    assert not problems, f"{name} disagrees with pyproject.toml (run `make lock`): {problems}"
    torch = pins["torch"]
    assert torch.endswith("+cpu") == (torch_build == "torch-cpu"), torch


def test_unsloth_and_hf_stacks_differ_where_unsloth_caps_them():
    hf = locks.lock_pins((LOCK_DIR / "hf-cpu.txt").read_text())
    unsloth = locks.lock_pins((LOCK_DIR / "unsloth-cpu.txt").read_text())
    assert "unsloth" not in hf and "unsloth" in unsloth
    assert Version(unsloth["transformers"]) <= Version("5.17.0") < Version(hf["transformers"])
    assert Version(unsloth["datasets"]) < Version("5")


@pytest.mark.skipif(not (BIN / "uv").exists(), reason="uv is in the dev extra")
@pytest.mark.slow  # resolves against PyPI
def test_locks_are_what_make_lock_writes(tmp_path):
    """Regenerating with the current pins as preferences changes nothing: the locks were made
    from this pyproject.toml by containers/lock.sh, not edited by hand. Needs the package index."""
    out = tmp_path / "locks"
    shutil.copytree(LOCK_DIR, out)
    run = subprocess.run(
        ["bash", "containers/lock.sh"],
        cwd=REPO,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "LOCK_DIR": str(out)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    for name in LOCKS:
        assert (out / f"{name}.txt").read_text() == (LOCK_DIR / f"{name}.txt").read_text(), (
            f"{name}.txt is stale: run `make lock`"
        )


def test_this_environment_is_the_locked_one():
    """`make env` installs the CPU lock and records it; every result carries the record."""
    current = locks.current()
    assert current["stack"] == "hf" and current["lock"] == "hf-cpu.txt", current
    assert current["lock_sha256"] == sha256_file(LOCK_DIR / "hf-cpu.txt"), "run `make env`"
    assert current["drift"] == [], current["drift"]


def test_drift_names_missing_and_changed_packages():
    pins = {"torch": "2.13.0+cpu", "peft": "0.21.2", "gone": "1.0"}
    installed = {"torch": "2.13.0+cpu", "peft": "0.22.0"}
    assert locks.drift(pins, installed) == [
        "gone: locked 1.0, installed none",
        "peft: locked 0.21.2, installed 0.22.0",
    ]


def test_drift_is_read_again_when_a_package_changes(tmp_path, monkeypatch):
    """Each job reuses the environment's drift until its package folder changes."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.setattr(sys, "path", [str(site)])
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    reads = []
    monkeypatch.setattr(locks, "installed_versions", lambda: reads.append(1) or {"peft": "0.21.2"})
    entry = {"lock_sha256": "abc", "pins": {"peft": "0.21.2"}}
    assert locks.current_drift(entry) == [] and locks.current_drift(entry) == []
    assert len(reads) == 1
    time.sleep(0.01)
    (site / "peft-0.22.0.dist-info").mkdir()  # what installing another version does
    monkeypatch.setattr(locks, "installed_versions", lambda: reads.append(1) or {"peft": "0.22.0"})
    assert locks.current_drift(entry) == ["peft: locked 0.21.2, installed 0.22.0"]
    assert len(reads) == 2


def test_image_reference_prefers_digest_and_override(tmp_path, monkeypatch):
    (tmp_path / "containers").mkdir()
    record = tmp_path / "containers" / "images.json"
    record.write_text(
        '{"hf": {"cuda": {"image": "registry:5000/tb/tunebench-hf:lock-abc", "digest": null}}}'
    )
    assert (
        locks.image_reference(tmp_path, "hf") == "docker://registry:5000/tb/tunebench-hf:lock-abc"
    )
    record.write_text(
        '{"hf": {"cuda": {"image": "registry:5000/tb/tunebench-hf:lock-abc",'
        ' "digest": "sha256:0123"}}}'
    )
    assert (
        locks.image_reference(tmp_path, "hf")
        == "docker://registry:5000/tb/tunebench-hf@sha256:0123"
    )
    monkeypatch.setenv("TUNEBENCH_IMAGE_HF", "/shared/images/hf.sif")
    assert locks.image_reference(tmp_path, "hf") == "/shared/images/hf.sif"
