"""Optional lm-evaluation-harness tasks (`evaluation.lm_eval`) for base and fine-tuned models.

Adapters are passed with the harness's own `peft=` model argument, so the harness loads
base + adapter exactly as a user of the published adapter would. Needs the `lmeval` extra.
"""

from __future__ import annotations

from pathlib import Path

import torch


def model_args(base: str, adapter_dir: Path | None, full_dir: Path | None, dtype: str) -> dict:
    args = {"pretrained": str(full_dir or base), "dtype": dtype}
    if adapter_dir is not None:
        args["peft"] = str(adapter_dir)
    return args


def run_tasks(
    settings, base: str, adapter_dir: Path | None = None, full_dir: Path | None = None
) -> dict[str, float]:
    """Flat `lm_eval/<task>/<metric>` scores (stderr entries dropped)."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:  # an optional extra: say how to get it
        raise RuntimeError(
            "evaluation.lm_eval needs lm-evaluation-harness: pip install -e '.[lmeval]'"
        ) from err
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    output = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args(base, adapter_dir, full_dir, dtype),
        tasks=list(settings.tasks),
        task_manager=TaskManager(include_path=settings.include_path),
        num_fewshot=settings.num_fewshot,
        limit=settings.limit,
        batch_size=settings.batch_size,
        device=device,
    )
    scores = {}
    for task, metrics in output["results"].items():
        for name, value in metrics.items():
            if isinstance(value, int | float) and "stderr" not in name and name != "alias":
                scores[f"lm_eval/{task}/{name.split(',')[0]}"] = float(value)
    return scores
