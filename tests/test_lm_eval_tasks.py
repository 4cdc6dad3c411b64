"""lm-evaluation-harness integration on a local model with a task defined locally."""

from __future__ import annotations

import json

import pytest
import yaml

from tunebench import lm_eval_tasks
from tunebench.spec import HarnessTasks

pytest.importorskip("lm_eval")


def local_task(tmp_path) -> str:
    """A multiple-choice task over the built-in words: which letter does the word start with?"""
    rows = [
        {
            "question": f"the word {' '.join(w)} starts with",
            "choices": list("abc"),
            "answer": "abc".index(w[0]),
        }
        for w in ("bad", "cab", "abba", "cob", "ace", "bee")
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "task": "tunebench_first_letter",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc"}],
    }
    (tmp_path / "first_letter.yaml").write_text(yaml.safe_dump(task))
    return str(tmp_path)


def test_harness_scores_base_and_adapter(tiny_model, tiny_data, tmp_path):
    _, model_dir = tiny_model
    _, _, tokenized = tiny_data
    settings = HarnessTasks(
        tasks=["tunebench_first_letter"], include_path=local_task(tmp_path), batch_size=4
    )
    base = lm_eval_tasks.run_tasks(settings, str(model_dir))
    assert 0.0 <= base["lm_eval/tunebench_first_letter/acc"] <= 1.0

    from helpers import METHODS, run_for, train

    run = run_for(METHODS["lora"], max_steps=3)
    result = train(run, model_dir, tokenized, tmp_path / "run")
    assert result["status"] == "ok"
    tuned = lm_eval_tasks.run_tasks(
        settings, str(model_dir), adapter_dir=tmp_path / "run" / "model"
    )
    assert set(tuned) == set(base)


def test_adapter_goes_through_the_harness_peft_argument(tmp_path):
    args = lm_eval_tasks.model_args("base-model", tmp_path / "adapter", None, "float32")
    assert args == {
        "pretrained": "base-model",
        "dtype": "float32",
        "peft": str(tmp_path / "adapter"),
    }
