"""Stage the Python packages a GPU machine without network lacks, for benchmarks/gpu_check.py.

The GPU machines this project borrows have Python 3.12, a CUDA build of torch, transformers,
accelerate, PEFT, pandas and numpy, but no TRL, bitsandbytes, Snakemake, pydantic or datasets,
no network, and take at most 64 MiB of files per call (the checkout included). So, here, with
network, this script:

1. takes every package tunebench needs (its requirements, closed over their own, plus the `gpu`
   extra) at the CUDA lock's pin, less those the GPU machine's image already has
   (benchmarks/data/gpu_image_packages.txt, read there with `pip list`) and the torch/CUDA stack;
2. downloads each, for CPython 3.12 on manylinux x86_64, checked against the lock's hashes
   (a package published only as a source archive is built into a wheel here: pure Python);
3. installs them into a folder for that platform (`pip install --target --platform`), then drops
   what the GPU cannot load: bitsandbytes' libraries for other CUDA, ROCm and XPU versions,
   PuLP's solver binaries for other systems (listed in the manifest: nothing is dropped silently);
4. packs each package into its own .tar.xz and groups them into chunk-N/ folders of at most
   --limit-mib, each installable on its own (`tar -xJf` into one folder on PYTHONPATH), so the
   chunks can travel in separate calls and be installed one after another.

    python benchmarks/gpu_wheels.py --out .gpu-wheels            # make gpu-wheels

Writes OUT/chunk-N/*.tar.xz and OUT/manifest.json (package, version, chunk, bytes, what was
dropped). The test suite checks the chunk sizes against the carry limit (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "containers" / "locks" / "hf-cuda.txt"
IMAGE_PACKAGES = ROOT / "benchmarks" / "data" / "gpu_image_packages.txt"
# One call carries the checkout (about 4 MiB tracked) and what `carry` names, 64 MiB in all.
CARRY_LIMIT_MIB = 64
DEFAULT_LIMIT_MIB = 48
# The GPU machine's interpreter and platform (manylinux tags pip must be told one by one).
PYTHON_VERSION = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
# The CUDA stack comes with the image's torch; carrying it would be GBs.
IMAGE_STACK = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
# Extras of tunebench the GPU check uses besides its requirements.
EXTRAS = ("gpu",)
# Not needed by any step of the check, and large: experiment tracking (off unless asked) and the
# lm-eval harness (an optional extra). Left out to fit the carry limit.
NOT_NEEDED = {"wandb", "lm-eval"}
# Carried although the image has them: its version may not be the one tunebench needs.
CARRY_ANYWAY = {
    "peft": "tunebench needs PEFT 0.21 (its adapter and k-bit code paths)",
    "fsspec": "datasets 5.2 needs fsspec <= 2026.9.0",
}
# Files of a package the GPU machine cannot use: (package, pattern of a path to drop, why).
DROP = (
    (
        "bitsandbytes",
        re.compile(r"bitsandbytes/libbitsandbytes_(?!cuda13\d|cpu)\w+\.so$"),
        "native libraries for other CUDA, ROCm and XPU versions (the image's torch is CUDA 13)",
    ),
    (
        "pulp",
        re.compile(r"pulp/solverdir/cbc/(?!linux/i64/)"),
        "CBC solver binaries for other systems (the GPU machine is linux x86_64)",
    ),
)


def lock_pins(lock: Path = LOCK) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from a uv/pip-compile lock with hashes."""
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text()):
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s\\]+)", block)
        if match:
            hashes = re.findall(r"--hash=(sha256:[0-9a-f]+)", block)
            pins[canonicalize_name(match[1])] = (match[2], hashes)
    return pins


def image_packages(path: Path = IMAGE_PACKAGES) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        names |= {canonicalize_name(n) for n in line.split("#", 1)[0].split()}
    return names


def needed(pins: dict, image: set[str]) -> list[str]:
    """tunebench's requirements (and EXTRAS), closed over their own requirements as the
    installed distributions here declare them, for the GPU machine's Python and platform; less
    the image's packages and the torch stack. A requirement not installed here is closed over
    from the lock alone (it is taken, its own requirements are not followed)."""
    env = default_environment() | {
        "python_version": PYTHON_VERSION,
        "python_full_version": f"{PYTHON_VERSION}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
    }
    todo = [Requirement(r) for r in metadata.requires("tunebench") or []]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extra = next(
            (e for e in EXTRAS if req.marker and req.marker.evaluate(env | {"extra": e})), ""
        )
        if name in seen or (req.marker and not req.marker.evaluate(env | {"extra": extra})):
            continue
        if name == "tunebench" or name in NOT_NEEDED:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            continue
    missing = sorted(n for n in seen if n not in pins and not IMAGE_STACK.match(n))
    if missing:
        raise SystemExit(f"error: not pinned in {LOCK.name}: {', '.join(missing)}")
    return sorted(
        n for n in seen if (n not in image or n in CARRY_ANYWAY) and not IMAGE_STACK.match(n)
    )


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def download(names: list[str], pins: dict, into: Path) -> None:
    """Every package's file checked against the lock's hashes: wheels for the GPU machine's
    platform; a package published only as a source archive, built into a wheel here."""
    platform_args = ["--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for tag in PLATFORMS:
        platform_args += ["--platform", tag]
    sources = []
    for name in names:
        version, hashes = pins[name]
        requirement = into.parent / f"{name}.txt"
        requirement.write_text(
            f"{name}=={version} " + " ".join(f"--hash={h}" for h in hashes) + "\n"
        )
        wheel = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes"]
            + ["--only-binary=:all:", *platform_args, "-d", str(into), "-r", str(requirement)],
            capture_output=True,
            text=True,
        )
        if wheel.returncode != 0:
            sources.append(requirement)
    for requirement in sources:
        archive = into.parent / "sources"
        pip("download", "-q", "--no-deps", "--require-hashes", "--no-binary=:all:",
            "-d", str(archive), "-r", str(requirement))  # fmt: skip
        for sdist in archive.iterdir():
            pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(into), str(sdist))
            sdist.unlink()


def install(wheels: Path, site: Path, names: list[str]) -> None:
    args = ["install", "-q", "--no-deps", "--no-index", "--no-compile", "--target", str(site)]
    args += ["--find-links", str(wheels), "--only-binary=:all:"]
    args += ["--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for tag in PLATFORMS + ["any"]:
        args += ["--platform", tag]
    pip(*args, *names)


def distributions(site: Path) -> dict[str, dict]:
    """Each installed distribution's files (from its RECORD) under `site`."""
    out = {}
    for info in sorted(site.glob("*.dist-info")):
        meta = (info / "METADATA").read_text(errors="replace")
        name = canonicalize_name(re.search(r"^Name: (.+)$", meta, re.M)[1].strip())
        version = re.search(r"^Version: (.+)$", meta, re.M)[1].strip()
        files = []
        for line in (info / "RECORD").read_text().splitlines():
            path = line.rsplit(",", 2)[0]
            if path and not path.startswith(".."):
                files.append(path)
        out[name] = {"version": version, "files": sorted(set(files))}
    return out


def drop_unusable(site: Path, dists: dict) -> dict[str, dict]:
    dropped = {}
    for name, pattern, why in DROP:
        if name not in dists:
            continue
        gone = [f for f in dists[name]["files"] if pattern.search(f)]
        size = sum((site / f).stat().st_size for f in gone if (site / f).is_file())
        for f in gone:
            (site / f).unlink(missing_ok=True)
        dists[name]["files"] = [f for f in dists[name]["files"] if f not in gone]
        dropped[name] = {"files": len(gone), "bytes": size, "why": why}
    return dropped


def pack(site: Path, dists: dict, out: Path, limit: int) -> list[dict]:
    """One .tar.xz per distribution, grouped largest first into chunk-N/ folders of at most
    `limit` bytes (first fit)."""
    packed = []
    tmp = out / "packed"
    tmp.mkdir(parents=True)
    for name, dist in dists.items():
        archive = tmp / f"{name}-{dist['version']}.tar.xz"
        with tarfile.open(archive, "w:xz", preset=6 | lzma.PRESET_EXTREME) as tar:
            for f in dist["files"]:
                if (site / f).exists():
                    tar.add(site / f, arcname=f, recursive=False)
        size = archive.stat().st_size
        if size > limit:
            raise SystemExit(f"error: {name} packs to {size / 2**20:.1f} MiB, over the limit")
        packed.append({"package": name, "version": dist["version"], "file": archive, "bytes": size})
    chunks: list[list[dict]] = []
    for entry in sorted(packed, key=lambda e: -e["bytes"]):
        chunk = next(
            (c for c in chunks if sum(e["bytes"] for e in c) + entry["bytes"] <= limit), None
        )
        if chunk is None:
            chunk = []
            chunks.append(chunk)
        chunk.append(entry)
    for n, chunk in enumerate(chunks, start=1):
        folder = out / f"chunk-{n}"
        folder.mkdir()
        for entry in chunk:
            entry["chunk"] = folder.name
            entry["file"] = str(
                shutil.move(entry["file"], folder / entry["file"].name).relative_to(out)
            )
    tmp.rmdir()
    return sorted(packed, key=lambda e: (e["chunk"], e["package"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".gpu-wheels", help="the folder to write (replaced)")
    parser.add_argument(
        "--limit-mib",
        type=float,
        default=DEFAULT_LIMIT_MIB,
        help=f"the most one chunk may hold (the call's limit is {CARRY_LIMIT_MIB} MiB in all)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    pins, image = lock_pins(), image_packages()
    names = needed(pins, image)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as work:
        wheels, site = Path(work) / "wheels", Path(work) / "site"
        wheels.mkdir()
        download(names, pins, wheels)
        install(wheels, site, names)
        dists = distributions(site)
        dropped = drop_unusable(site, dists)
        packed = pack(site, dists, out, int(args.limit_mib * 2**20))
    manifest = {
        "lock": str(LOCK.relative_to(ROOT)),
        "python": PYTHON_VERSION,
        "limit_bytes": int(args.limit_mib * 2**20),
        "packages": packed,
        "dropped": dropped,
        "image_packages": str(IMAGE_PACKAGES.relative_to(ROOT)),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for chunk in sorted({e["chunk"] for e in packed}):
        size = sum(e["bytes"] for e in packed if e["chunk"] == chunk)
        print(f"{out / chunk}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
