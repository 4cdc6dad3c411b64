"""`tunebench export`: a finished run merged into one model, converted to GGUF by llama.cpp's
converter, with an Ollama Modelfile and a manifest, and checked.

The check loads every GGUF back with transformers (which dequantises it) and compares its
logits with the merged model's on held-out prompts: the run's test split, rendered with the chat
template as evaluation renders it. An export whose check fails raises ExportCheckFailed and
writes nothing (the figures are in the error); a previous export stays as it was. Everything is
written into a temporary folder beside the output and renamed into place only when complete.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import torch

from tunebench import gguf_import, layout, models
from tunebench.export import convert
from tunebench.export.convert import NOT_OFFERED, ConversionError
from tunebench.fetch import FetchError
from tunebench.io import atomic_dir, read_json, read_jsonl, sha256_file, write_json
from tunebench.measure import package_versions
from tunebench.outcomes import ModelNotFound

DEFAULT_TYPES = ("f16", "q8_0")
# What made an export: recorded in its manifest.
EXPORT_PACKAGES = ("tunebench", "gguf", "transformers", "peft", "torch", "safetensors")
MAX_PROMPTS = 32
# Greedy next-token agreement with the merged model, over every prompt position, that each type
# must reach. Ternary types (tq1_0, tq2_0) suit only models trained ternary: reported, no bar.
MIN_AGREEMENT = {"f32": 0.999, "f16": 0.99, "bf16": 0.95, "q8_0": 0.95}
# The merged model against the model before merging (base + adapter; for QLoRA the 4-bit base +
# adapter that evaluation scored): the merge is exact up to rounding, so the greedy token flips
# only at near-ties.
MIN_MERGE_AGREEMENT = 0.99
ADAPTER_METHODS = ("lora", "dora", "rslora", "qlora")


class ExportError(RuntimeError):
    """An export that cannot be made; nothing was written."""


class RunNotExportable(ExportError):
    """The run is missing or its training did not finish."""


class ExportCheckFailed(ExportError):
    """The exported files do not reproduce the merged model; `manifest` holds the figures."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    types: tuple[str, ...] | list[str] = DEFAULT_TYPES,
    check: bool = True,
    test_file: str | Path | None = None,
    max_prompts: int = MAX_PROMPTS,
    min_agreement: dict[str, float] | None = None,
) -> dict:
    """Export one finished run (results/<experiment>/runs/<run_id>) to `out` (default
    results/<experiment>/exports/<run_id>): merged/ (safetensors + tokenizer), one
    <run_id>.<type>.gguf per type, Modelfile and manifest.json. Returns the manifest.

    `test_file`: the held-out prompts (default: the run's prepared test split under the
    experiment's results). `min_agreement` overrides MIN_AGREEMENT per type."""
    from tunebench.matrix import RunConfig

    run_dir = Path(run_dir)
    types = list(dict.fromkeys(types))
    if not types:
        raise ExportError("no GGUF types asked for")
    unknown = [t for t in types if t not in convert.OUTTYPES]
    if unknown:
        raise ExportError(
            f"GGUF type(s) {', '.join(unknown)}: llama.cpp's converter writes "
            f"{', '.join(convert.OUTTYPES)}; {NOT_OFFERED}"
        )
    result_path = layout.train_result_in(run_dir)
    result = _finished_train_result(run_dir, result_path)
    run = RunConfig.model_validate(result["config"])
    run_id = result.get("run_id") or run.run_id
    results_root = run_dir.parent.parent
    out = Path(out) if out is not None else results_root / layout.EXPORT.format(run_id=run_id)
    base_location = result.get("base_model")
    if base_location is None and run.method != "full":  # a full fine-tune needs no base
        base_location = _base_location_fallback(run, results_root)
    thresholds = MIN_AGREEMENT | (min_agreement or {})

    try:
        tokenizer = models.load_tokenizer(run.model, str(run_dir / "model"))
        prompts = []
        if check:
            test_file = Path(test_file) if test_file else _test_file(run, results_root)
            prompts = heldout_prompts(run, tokenizer, test_file, max_prompts)

        with atomic_dir(out) as tmp:
            model, merge = merge_run(run, run_dir, base_location, prompts)
            merged_dir = tmp / "merged"
            model.save_pretrained(merged_dir)
            tokenizer.save_pretrained(merged_dir)
            files = {t: tmp / f"{run_id}.{t}.gguf" for t in types}
            converter = convert.convert(
                merged_dir, files, model_name=run_id, log=tmp / "convert.log"
            )
            ggufs = [
                {
                    "type": kind,
                    "file": path.name,
                    "bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                    "metadata": gguf_metadata(path, tokenizer, model.config.vocab_size),
                }
                for kind, path in files.items()
            ]
            modelfile = write_modelfile(tmp, run_id, ggufs, tokenizer)
            checks = {"skipped": True}
            if check:
                checks = check_export(model, tokenizer, tmp, ggufs, prompts, merge, thresholds)
                checks["test_file"] = str(test_file.resolve())
            manifest = {
                "tunebench_export": 1,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "run": _run_record(run, run_id, run_dir, result_path),
                "base_model": _base_record(base_location) if base_location else None,
                "merged_into": merge["merged_into"],
                "merged": {"folder": "merged", "files": _file_hashes(merged_dir)},
                "gguf": ggufs,
                "modelfile": modelfile,
                "converter": converter,
                "not_offered": NOT_OFFERED,
                "versions": package_versions(EXPORT_PACKAGES),
                "check": checks,
            }
            write_json(tmp / "manifest.json", manifest)
            if check and not checks["passed"]:
                raise ExportCheckFailed(
                    f"run {run_id}: the export check failed; nothing written to {out}.\n"
                    + describe_check(checks),
                    manifest,
                )
    except (ConversionError, FetchError, ModelNotFound) as err:
        raise ExportError(f"run {run_id}: {err}") from err
    return manifest


def _run_record(run, run_id: str, run_dir: Path, result_path: Path) -> dict:
    return {
        "run_id": run_id,
        "method": run.method,
        "backend": run.backend,
        "model": run.model.name,
        "dataset": run.dataset.name,
        "train_result": str(result_path.resolve()),
        "train_result_sha256": sha256_file(result_path),
        "model_files": _file_hashes(run_dir / "model"),
    }


def _finished_train_result(run_dir: Path, result_path: Path) -> dict:
    if not run_dir.is_dir():
        runs = sorted(p.name for p in run_dir.parent.glob("*") if p.is_dir())
        listed = ", ".join(runs[:10]) + (f" and {len(runs) - 10} more" if len(runs) > 10 else "")
        raise RunNotExportable(
            f"run {run_dir.name}: no such run in {run_dir.parent}"
            + (f" (runs there: {listed})" if runs else "")
        )
    if not result_path.is_file():
        raise RunNotExportable(
            f"run {run_dir.name}: no training result at {result_path} (has it been trained?)"
        )
    result = read_json(result_path)
    if result.get("status") != "ok":
        raise RunNotExportable(
            f"run {result.get('run_id') or run_dir.name}: training did not finish (status "
            f"{result.get('status')!r}: {result.get('reason') or 'no reason recorded'}); "
            "nothing to export"
        )
    if not (run_dir / "model").is_dir():
        raise RunNotExportable(f"run {run_dir.name}: no saved model in {run_dir / 'model'}")
    return result


def _base_location_fallback(run, results_root: Path) -> str:
    """For a result written before train results recorded `base_model`: where the workflow
    keeps the base (a built-in model's folder, or the experiment's hub id / path)."""
    from tunebench.layout import BASE_MODEL
    from tunebench.matrix import model_key

    builtin = results_root / BASE_MODEL.format(model=model_key(run.model))
    try:
        return models.model_location(run.model, builtin if run.model.builtin else None)
    except Exception as err:
        raise RunNotExportable(
            f"run {run.run_id}: its train result does not say where its base model came from "
            f"(base_model), and it cannot be found ({err})"
        ) from err


def _test_file(run, results_root: Path) -> Path:
    from tunebench.layout import DATA
    from tunebench.matrix import dataset_key

    path = results_root / DATA.format(dataset=dataset_key(run.dataset)) / "test.jsonl"
    if not path.is_file():
        raise ExportError(
            f"run {run.run_id}: no held-out data at {path} for the check (prepare the dataset, "
            "or export with --no-check)"
        )
    return path


def heldout_prompts(run, tokenizer, test_file: Path, limit: int) -> list[list[int]]:
    """Token ids of up to `limit` held-out prompts, rendered as tokenisation renders them for
    evaluation (the chat template, no extra special tokens); a plain-text example is its text."""
    from tunebench.data.templates import render

    spec = run.dataset
    prompts = []
    for example in read_jsonl(test_file)[:limit]:
        rendered = render(example, tokenizer, spec.template, spec.custom_template)
        text = rendered.prompt if "messages" in example else rendered.prompt + rendered.response
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: run.training.max_length]
        if ids:
            prompts.append(ids)
    if not prompts:
        raise ExportError(f"run {run.run_id}: no held-out prompts in {test_file}")
    return prompts


def merge_run(run, run_dir: Path, base_location: str, prompts: list[list[int]]):
    """(merged float32 model, merge record). Full fine-tuning: the saved model. Adapters: the
    base in float32 + the adapter, merged with PEFT's merge_and_unload. For QLoRA the base is
    the 4-bit base the adapter was trained against, dequantised to float32 (the nf4/fp4 values,
    not the original weights): merged into the original weights, the adapter no longer
    compensates for the quantisation, and the export is not the model evaluation scored (on
    SmolLM2-135M it agreed with it on 53% of greedy next tokens)."""
    float32 = torch.float32
    if run.method == "full":
        model = models.load_base_model(run.model, str(run_dir / "model"), float32)
        return model.eval(), {"merged_into": None, "reference": None}
    if run.method not in ADAPTER_METHODS:
        raise ExportError(f"run {run.run_id}: cannot export method {run.method!r}")
    from peft import PeftModel

    merged_into = {"location": base_location, "dtype": "float32", "trained_against": "float32"}
    if run.method == "qlora":
        quant = f"4-bit {run.quant_type}" + (", double quantisation" if run.double_quant else "")
        config = models.quantization_config(run.quant_type, run.double_quant, "float32")
        base = models.load_base_model(run.model, base_location, float32, config)
        base.dequantize(dtype=float32)  # the 4-bit values, as float32 weights
        merged_into |= {
            "trained_against": quant,
            "dequantised_from": quant,
            "note": (
                f"the adapter was trained against the {quant} quantised base; it is merged into "
                "that base dequantised to float32 (the quantised values, not the original "
                "weights), so the export is the model evaluation scored, up to rounding"
            ),
        }
        what = "the 4-bit base + adapter that evaluation scored"
    else:
        base = models.load_base_model(run.model, base_location, float32)
        what = "base + adapter before merging"
    reference = None
    if prompts and run.method == "qlora":
        from tunebench.evaluate import load_trained

        scored = load_trained(run, base_location, run_dir)
        reference = (what, _logits(scored, prompts))
        del scored
    model = PeftModel.from_pretrained(base, str(run_dir / "model")).eval()
    if prompts and run.method != "qlora":
        reference = (what, _logits(model, prompts))
    model = model.merge_and_unload()
    return model.eval(), {"merged_into": merged_into, "reference": reference}


@torch.no_grad()
def _logits(model, prompts: list[list[int]]) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    return [model(torch.tensor([ids], device=device)).logits[0].float().cpu() for ids in prompts]


def compare(expected: list[torch.Tensor], got: list[torch.Tensor], prompts) -> dict:
    """Max and mean |logit difference| over every position, and greedy next-token agreement
    over distinct contexts: prompts share their first tokens (a system prompt, an instruction),
    and a near-tie there would otherwise count once per prompt."""
    max_diff, total, count, same, positions = 0.0, 0.0, 0, 0, 0
    seen: set[tuple[int, ...]] = set()
    for a, b, ids in zip(expected, got, prompts, strict=True):
        diff = (a - b).abs()
        max_diff = max(max_diff, diff.max().item())
        total += diff.sum().item()
        count += diff.numel()
        agree = (a.argmax(-1) == b.argmax(-1)).tolist()
        for i in range(len(ids)):
            context = tuple(ids[: i + 1])
            if context not in seen:
                seen.add(context)
                same += agree[i]
                positions += 1
    return {
        "max_abs_logit_diff": max_diff,
        "mean_abs_logit_diff": total / max(count, 1),
        "greedy_agreement": same / max(positions, 1),
        "positions": positions,
    }


def gguf_metadata(path: Path, tokenizer, vocab_size: int) -> dict:
    """What the GGUF says about its tokenizer and chat template, and whether that is the
    tokenizer's (token count, EOS, the Jinja chat template verbatim)."""
    import gguf

    reader = gguf.GGUFReader(path)

    def field(name):
        found = reader.get_field(name)
        return None if found is None else found.contents()

    template = field("tokenizer.chat_template")
    tokens = field("tokenizer.ggml.tokens") or []
    metadata = {
        "architecture": field("general.architecture"),
        "name": field("general.name"),
        "file_type": field("general.file_type"),
        "tensors": len(reader.tensors),
        "tokenizer_model": field("tokenizer.ggml.model"),
        "tokenizer_pre": field("tokenizer.ggml.pre"),
        "tokens": len(tokens),
        "merges": len(field("tokenizer.ggml.merges") or []),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "add_bos_token": field("tokenizer.ggml.add_bos_token"),
        "chat_template_sha256": _text_sha256(template),
    }
    problems, warnings = [], []
    if len(tokens) != vocab_size:
        problems.append(f"{len(tokens)} tokens, the model has {vocab_size}")
    # The converter may take EOS from config.json where the tokenizer names another token (an
    # instruct model's end of turn): worth seeing, not necessarily wrong.
    if tokenizer.eos_token_id is not None and metadata["eos_token_id"] != tokenizer.eos_token_id:
        warnings.append(
            f"EOS id {metadata['eos_token_id']}, the tokenizer's is {tokenizer.eos_token_id}"
        )
    if tokenizer.chat_template and template != tokenizer.chat_template:
        problems.append(
            "no chat template" if template is None else "a chat template that is not the model's"
        )
    metadata["chat_template_matches"] = bool(tokenizer.chat_template) and not any(
        "chat template" in p for p in problems
    )
    metadata["problems"] = problems
    metadata["warnings"] = warnings
    return metadata


def _text_sha256(text: str | None) -> str | None:
    import hashlib

    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def write_modelfile(folder: Path, run_id: str, ggufs: list[dict], tokenizer) -> dict:
    """The Modelfile beside the GGUF files: FROM the q8_0 file if there is one, else the
    first; the chat template in Go-template form; stop at EOS and the end-of-turn tokens."""
    from tunebench.export import modelfile

    chosen = next((g for g in ggufs if g["type"] == "q8_0"), ggufs[0])
    # A runtime that adds BOS (the GGUF says so) must not get a second one from the template.
    strip_bos = bool(chosen["metadata"]["add_bos_token"])
    template = modelfile.derive(tokenizer, strip_bos=strip_bos)
    header = (
        f"Ollama Modelfile for tunebench run {run_id} (tunebench export).\n"
        "Its TEMPLATE is the tokenizer's Jinja chat template rendered as a Go template; the\n"
        "GGUF embeds the Jinja original as tokenizer.chat_template.\n"
        f"Use: ollama create {run_id.lower()} -f Modelfile"
    )
    text = modelfile.modelfile_text(chosen["file"], template, header)
    (folder / "Modelfile").write_text(text)
    return {
        "file": "Modelfile",
        "from": chosen["file"],
        "template": template.text,
        "stops": template.stops,
        "notes": template.notes,
    }


def check_export(
    model, tokenizer, folder: Path, ggufs: list[dict], prompts, merge: dict, thresholds: dict
) -> dict:
    """Every GGUF loaded back with transformers and compared with the merged model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    expected = _logits(model, prompts)
    checks: dict = {"prompts": len(prompts), "gguf": {}}
    passed = True
    if merge["reference"] is not None:
        what, reference = merge["reference"]
        figures = compare(reference, expected, prompts) | {"reference": what}
        figures["min_agreement"] = MIN_MERGE_AGREEMENT
        figures["passed"] = figures["greedy_agreement"] >= MIN_MERGE_AGREEMENT
        passed &= figures["passed"]
        checks["merge"] = figures
    for entry in ggufs:
        kind, name = entry["type"], entry["file"]
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        loaded = loaded.to(next(model.parameters()).device).eval()
        figures = compare(expected, _logits(loaded, prompts), prompts)
        del loaded
        bar = thresholds.get(kind)
        figures["min_agreement"] = bar
        figures["passed"] = None if bar is None else figures["greedy_agreement"] >= bar
        # transformers' own GGUF tokenizer reader on the same prompts: a figure, not a bar (it
        # is transformers' reconstruction, not the tokenizer llama.cpp runs)
        try:
            reread = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            texts = [tokenizer.decode(p) for p in prompts]
            same = sum(
                reread(t, add_special_tokens=False)["input_ids"]
                == tokenizer(t, add_special_tokens=False)["input_ids"]
                for t in texts
            )
            figures["tokenizer_reread_agreement"] = same / len(prompts)
        except Exception as err:
            figures["tokenizer_reread_agreement"] = None
            figures["tokenizer_reread_error"] = str(err).splitlines()[0][:200]
        figures["metadata_problems"] = entry["metadata"]["problems"]
        if figures["metadata_problems"]:
            figures["passed"] = False
        passed &= figures["passed"] is not False
        checks["gguf"][kind] = figures
    checks["passed"] = bool(passed)
    return checks


def describe_check(checks: dict) -> str:
    """The check's figures, one line per GGUF type (and one for the merge)."""
    if checks.get("skipped"):
        return "check: skipped (--no-check)"
    lines = []
    merge = checks.get("merge")
    if merge:
        verdict = {True: "ok", False: "FAILED", None: "figure only"}[merge["passed"]]
        lines.append(
            f"merge vs {merge['reference']}: max |logit diff| {merge['max_abs_logit_diff']:.3g}, "
            f"mean {merge['mean_abs_logit_diff']:.3g}, greedy agreement "
            f"{merge['greedy_agreement']:.4f} [{verdict}]"
        )
    for kind, f in checks["gguf"].items():
        verdict = {True: "ok", False: "FAILED", None: "no bar"}[f["passed"]]
        bar = "" if f["min_agreement"] is None else f" (needs >= {f['min_agreement']})"
        line = (
            f"{kind}: max |logit diff| {f['max_abs_logit_diff']:.3g}, mean "
            f"{f['mean_abs_logit_diff']:.3g}, greedy agreement {f['greedy_agreement']:.4f}"
            f"{bar} over {f['positions']} positions [{verdict}]"
        )
        if f["metadata_problems"]:
            line += f"; GGUF metadata: {'; '.join(f['metadata_problems'])}"
        lines.append(line)
    lines.append(
        f"check: {'passed' if checks['passed'] else 'FAILED'} ({checks['prompts']} prompts)"
    )
    return "\n".join(lines)


def describe_export(manifest: dict, out: Path) -> str:
    """Where an export went and its check figures: what `tunebench export` prints."""
    lines = [f"exported run {manifest['run']['run_id']} ({manifest['run']['method']}) to {out}"]
    merged = manifest["merged_into"]
    if merged:
        lines.append(f"  merged into {merged['location']} ({merged['dtype']})")
        if merged.get("note"):
            lines.append(f"  note: {merged['note']}")
    lines.append(f"  merged model: {out / 'merged'}")
    for g in manifest["gguf"]:
        lines.append(f"  {g['type']}: {out / g['file']} ({g['bytes']:,} bytes)")
    lines.append(f"  Ollama: {out / 'Modelfile'} (FROM {manifest['modelfile']['from']})")
    lines.append(f"  manifest: {out / 'manifest.json'}")
    lines += ["  " + line for line in describe_check(manifest["check"]).splitlines()]
    return "\n".join(lines)


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _base_record(location: str) -> dict:
    """Where the base came from; a GGUF-imported base's import.json travels with it."""
    record: dict = {"location": location, "import": None}
    imported = Path(location) / gguf_import.RECORD
    if imported.is_file():
        record["import"] = read_json(imported)
    return record
