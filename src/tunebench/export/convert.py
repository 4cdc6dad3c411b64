"""llama.cpp's Hugging Face -> GGUF converter, pinned: fetched once from llama-cpp-python's source
distribution (which vendors llama.cpp) into the tunebench cache, and run as a subprocess.

The converter writes f32, f16, bf16, q8_0, tq1_0 and tq2_0. k-quants (Q4_K_M, ...) need
llama.cpp's compiled `llama-quantize`, which this does not build: quantise an exported f16 file
with it to get one.

Run as `python -m tunebench.export.convert TOOL_DIR MODEL_DIR OUTFILE:TYPE ...`, it is the
converter with one addition (see `_accept_gpt2_byte_level`): the converter names a BPE
tokenizer's pre-tokenizer from a hash of the token ids of a fixed text, so a tokenizer trained
here (the built-in models') has a hash it has never seen, although its pre-tokenizer is exactly
GPT-2's. For such a tokenizer only, the wrapper answers "gpt-2"; every other tokenizer, a real
model's included, gets the converter's own answer (or its own error).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_ROOT = f"llama_cpp_python-{VERSION}"
# What the converter needs from the sdist (plus llama.cpp's version and licence).
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "CMakeLists.txt", "LICENSE")
# The sdist keeps the vendored llama.cpp's git metadata: HEAD is the exact commit.
LLAMA_CPP_HEAD = f"{SDIST_ROOT}/.git/modules/vendor/llama.cpp/HEAD"
INFO = "tunebench-converter.json"
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0")
NOT_OFFERED = (
    "k-quants (q4_k_m, q5_k_m, q6_k, ...) and other llama.cpp quantisations need the compiled "
    "llama-quantize tool, which tunebench does not build; run it on the f16 file"
)


class ConversionError(RuntimeError):
    """The converter could not be fetched or failed on a model."""


def tool_dir() -> Path:
    from tunebench.fetch import cache_root

    return cache_root() / "tools" / f"{PACKAGE}-{VERSION}"


def source_archive() -> Path:
    """llama-cpp-python's pinned source distribution (fetched once): the converter's source,
    and what `make llamacpp-check` builds llama.cpp from."""
    from tunebench import fetch

    return fetch.distribution(f"{PACKAGE}=={VERSION}", SDIST_SHA256, source=True)


def ensure_converter() -> dict:
    """Fetch and extract the converter once (a lock keeps two exports from racing); return
    what identifies it: package, version, sdist sha256, llama.cpp version and commit."""
    from tunebench import fetch
    from tunebench.io import read_json, write_json

    folder = tool_dir()

    def whole() -> bool:  # the info file is written last; the script's absence means damage
        return (folder / INFO).is_file() and (folder / KEEP[0]).is_file()

    if whole():
        return read_json(folder / INFO)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if whole():  # another process finished it while this one waited
            return read_json(folder / INFO)
        archive = source_archive()
        fetch.extract_tree(archive, f"{SDIST_ROOT}/vendor/llama.cpp", KEEP, folder)
        commit = None
        try:
            head = fetch.member(archive, LLAMA_CPP_HEAD, folder / ".llama.cpp-HEAD")
            commit = head.read_text().strip() or None
            head.unlink()
        except fetch.FetchError:
            pass  # an sdist without git metadata: the version from CMakeLists.txt still says
        info = {
            "package": PACKAGE,
            "version": VERSION,
            "sdist_sha256": SDIST_SHA256,
            "llama_cpp_version": _cmake_version(folder / "CMakeLists.txt"),
            "llama_cpp_commit": commit,
            "gguf_py_version": _pyproject_version(folder / "gguf-py" / "pyproject.toml"),
            "outtypes": list(OUTTYPES),
            "not_offered": NOT_OFFERED,
        }
        write_json(folder / INFO, info)  # written last: its presence means the tool is whole
    return info


def _cmake_version(path: Path) -> str | None:
    if not path.is_file():
        return None
    parts = dict(re.findall(r"set\(LLAMA_VERSION_(MAJOR|MINOR|PATCH) (\d+)\)", path.read_text()))
    if len(parts) != 3:
        return None
    return f"{parts['MAJOR']}.{parts['MINOR']}.{parts['PATCH']}"


def _pyproject_version(path: Path) -> str | None:
    found = re.search(r'^version = "([^"]+)"', path.read_text(), re.M) if path.is_file() else None
    return found.group(1) if found else None


def convert(
    model_dir: Path,
    outputs: dict[str, Path],
    model_name: str | None = None,
    log: Path | None = None,
) -> dict:
    """Convert a saved model folder to one GGUF file per type ({type: path}), in one converter
    process (its imports cost more than converting a small model); its output goes to `log`.
    Returns the converter info, and whether the GPT-2 pre-tokenizer answer was needed."""
    bad = [t for t in outputs if t not in OUTTYPES]
    if bad:
        raise ConversionError(
            f"GGUF type(s) {', '.join(bad)} not offered by llama.cpp's converter (it writes "
            f"{', '.join(OUTTYPES)}); {NOT_OFFERED}"
        )
    info = ensure_converter()
    command = [sys.executable, "-m", "tunebench.export.convert", str(tool_dir()), str(model_dir)]
    command += [f"{path}:{kind}" for kind, path in outputs.items()]
    if model_name:
        command += ["--model-name", model_name]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ConversionError(f"llama.cpp's converter failed on {model_dir}:\n{tail}")
    missing = [str(p) for p in outputs.values() if not Path(p).is_file()]
    if missing:
        raise ConversionError(f"the converter did not write {', '.join(missing)}")
    return info | {"gpt2_pre_tokenizer_assumed": FALLBACK_MESSAGE in done.stderr}


# ------------------------------------------------------------ inside the converter's process

FALLBACK_MESSAGE = "tunebench: unknown pre-tokenizer hash"


def is_gpt2_byte_level(tokenizer) -> bool:
    """A BPE tokenizer whose only text processing is GPT-2's: byte-level with GPT-2's split
    regex, no prefix space, no normaliser. llama.cpp's "gpt-2" pre-tokenizer is that regex, so
    it tokenises such a vocabulary as the tokenizer does. (trim_offsets only moves offsets.)"""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    pre = dict(spec.get("pre_tokenizer") or {})
    pre.pop("trim_offsets", None)
    return (
        spec.get("model", {}).get("type") == "BPE"
        and spec.get("normalizer") is None
        and pre == {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    )


def _accept_gpt2_byte_level(base) -> None:
    """Wrap the converter's pre-tokenizer lookup: its answer when it has one; "gpt-2" only when
    it has none and the tokenizer is exactly GPT-2's byte-level BPE; else its own error."""
    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if not is_gpt2_byte_level(tokenizer):
                raise
            base.logger.warning(
                f"{FALLBACK_MESSAGE}, but the pre-tokenizer is exactly GPT-2's byte-level BPE "
                "(GPT-2 regex, no prefix space, no normaliser): using 'gpt-2'"
            )
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre


def _main(argv: list[str]) -> None:
    import runpy

    tool, model_dir, *rest = argv
    extra = rest[rest.index("--model-name") :] if "--model-name" in rest else []
    targets = [a.rsplit(":", 1) for a in rest[: len(rest) - len(extra)]]
    # The converter's own gguf-py (what it was written against) before the installed gguf.
    sys.path[:0] = [tool, str(Path(tool) / "gguf-py")]
    from conversion import base

    _accept_gpt2_byte_level(base)
    script = runpy.run_path(str(Path(tool) / "convert_hf_to_gguf.py"), run_name="converter")
    for outfile, kind in targets:
        sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outfile", outfile, "--outtype", kind]
        sys.argv += extra
        script["main"]()


if __name__ == "__main__":
    _main(sys.argv[1:])
