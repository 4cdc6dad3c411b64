"""What the harness costs on top of the training it drives.

One tiny-m LoRA r8 run of the default experiment's settings, trained as the workflow trains it
(`python -m tunebench stage train`, a process per job) and by a plain hand-written TRL script
with the same model, data, method and settings, alternating, several repeats. Reported:

- per-step time (seconds inside `trainer.train()` / steps) of each, and their ratio;
- the fixed cost of a job: its process wall time minus the time inside `trainer.train()`
  (interpreter start, imports, loading, saving, the result file), for both, and for the
  harness's evaluate job (wall time minus the time spent scoring);
- the final training loss of both: equal when both computed the same thing.

    python benchmarks/overhead.py [--repeats 5] [--steps 150]

Writes benchmarks/figures/overhead.md and overhead.csv. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import yaml

from tunebench.measure import measured_on

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "benchmarks" / "figures"

# The plain script: what a user would write by hand with transformers + TRL + PEFT for the same
# run. It reads the same tokenised split (so the data are the same) and knows nothing of
# tunebench.
PLAIN_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    started = time.perf_counter()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    settings = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(settings["model"])
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    data = Dataset.from_parquet(settings["train"]).remove_columns(["id", "prompt_length"])
    data = data.filter(lambda ex: len(ex["input_ids"]) <= settings["max_length"])
    model = AutoModelForCausalLM.from_pretrained(settings["model"], dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=settings["out"],
            max_steps=settings["steps"],
            per_device_train_batch_size=settings["batch_size"],
            learning_rate=settings["learning_rate"],
            lr_scheduler_type="cosine",
            warmup_steps=settings["warmup_ratio"],
            optim="adamw_torch",  # the experiment's optimizer (transformers' default is fused)
            bf16=False,  # the experiment's precision on a CPU (SFTConfig would pick bf16)
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_length=settings["max_length"],
            completion_only_loss=True,
            gradient_checkpointing=False,
            use_cpu=True,
            seed=0,
            data_seed=0,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        ),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    inside = time.perf_counter()
    output = trainer.train()
    train_seconds = time.perf_counter() - inside
    trainer.save_model(settings["out"] + "/model")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"train_seconds": train_seconds, "steps": output.global_step,
                      "train_loss_last": losses[-1]}))
    """
)


def experiment(steps: int) -> dict:
    """The default experiment's tiny-m and task, one LoRA r8 run (its settings as in
    experiments/smoke.yaml), a shorter pre-training (weights do not change step time)."""
    smoke = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())
    model = next(m for m in smoke["models"] if m["name"] == "tiny-m")
    model["builtin"]["pretrain_steps"] = 50
    smoke.pop("exclude", None)  # of the other model's runs
    return {
        **smoke,
        "name": "overhead",
        "models": [model],
        "methods": [{"method": "lora", "ranks": [8], "alpha_ratio": 2, "learning_rate": 5e-3}],
        "training": {**smoke["training"], "max_steps": steps, "seeds": [0]},
    }


def timed(command: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed:\n{done.stderr[-3000:]}")
    return seconds, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=FIGURES / "overhead")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "exp.yaml").write_text(yaml.safe_dump(experiment(args.steps)))
        # Prepare data and the base model with the workflow itself, up to the train step.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "--snakefile",
                str(REPO / "workflow" / "Snakefile"),
                "--configfile",
                "exp.yaml",
                "--until",
                "tokenize",
                "pretrain_base",
                "evaluate_base",
                "--cores",
                "2",
                "-q",
            ],
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
        )
        from tunebench.experiment import load_experiment
        from tunebench.matrix import SCORING_ONLY, dataset_key, expand, model_key, tokenizer_key

        exp = load_experiment(work / "exp.yaml")
        (run,) = expand(exp)
        root = work / "results" / "overhead"
        model_dir = root / "base_models" / model_key(run.model)
        data = root / "data" / dataset_key(run.dataset)
        tokenized = data / "tokenized" / tokenizer_key(run.model)
        settings = {
            "model": str(model_dir),
            "train": str(tokenized / "train.parquet"),
            "steps": args.steps,
            "batch_size": run.training.batch_size,
            "max_length": run.training.max_length,
            "learning_rate": run.learning_rate,
            "warmup_ratio": run.training.warmup_ratio,
        }
        (work / "plain.py").write_text(PLAIN_SCRIPT)
        for repeat in range(args.repeats):
            run_dir = work / f"harness-{repeat}"
            wall, _ = timed(
                [
                    sys.executable,
                    "-m",
                    "tunebench",
                    "stage",
                    "train",
                    "--run",
                    run.model_dump_json(exclude=SCORING_ONLY),
                    f"--model-dir={model_dir}",
                    "--tokenized",
                    str(tokenized),
                    "--run-dir",
                    str(run_dir),
                    "--result",
                    str(run_dir / "result.json"),
                    "--tracking",
                    "{}",
                    "--threads",
                    "1",
                ],
                env,
            )
            result = json.loads((run_dir / "result.json").read_text())
            rows.append(
                {
                    "job": "harness train",
                    "repeat": repeat,
                    "wall_seconds": wall,
                    "inner_seconds": result["train_seconds"],
                    "steps": result["steps"],
                    "train_loss_last": result["train_loss_last"],
                }
            )
            wall, done = timed(
                [
                    sys.executable,
                    str(work / "plain.py"),
                    json.dumps(settings | {"out": str(work / f"plain-{repeat}")}),
                ],
                env,
            )
            plain = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "job": "plain TRL train",
                    "repeat": repeat,
                    "wall_seconds": wall,
                    "inner_seconds": plain["train_seconds"],
                    "steps": plain["steps"],
                    "train_loss_last": plain["train_loss_last"],
                }
            )
            wall, _ = timed(
                [
                    sys.executable,
                    "-m",
                    "tunebench",
                    "stage",
                    "evaluate",
                    "--run",
                    run.model_dump_json(exclude=SCORING_ONLY),
                    "--train-result",
                    str(run_dir / "result.json"),
                    "--run-dir",
                    str(run_dir),
                    "--dataset",
                    run.dataset.model_dump_json(),
                    "--data",
                    str(data),
                    "--tokenized",
                    str(tokenized),
                    "--evaluation",
                    exp.evaluation.model_dump_json(),
                    "--result",
                    str(run_dir / "eval.json"),
                    "--samples",
                    str(run_dir / "s.jsonl"),
                    f"--model-dir={model_dir}",
                    "--threads",
                    "1",
                ],
                env,
            )
            scored = json.loads((run_dir / "eval.json").read_text())
            rows.append(
                {
                    "job": "harness evaluate",
                    "repeat": repeat,
                    "wall_seconds": wall,
                    "inner_seconds": scored["eval_seconds"],
                    "steps": None,
                    "train_loss_last": None,
                }
            )
            print(rows[-3:], flush=True)
    frame = pd.DataFrame(rows)
    frame["fixed_seconds"] = frame["wall_seconds"] - frame["inner_seconds"]
    frame["seconds_per_step"] = frame["inner_seconds"] / frame["steps"]
    summary = frame.groupby("job", sort=False).agg(
        wall_median=("wall_seconds", "median"),
        inner_median=("inner_seconds", "median"),
        fixed_median=("fixed_seconds", "median"),
        fixed_min=("fixed_seconds", "min"),
        seconds_per_step_median=("seconds_per_step", "median"),
        train_loss_last=("train_loss_last", "first"),
    )
    ratio = (
        summary.loc["harness train", "seconds_per_step_median"]
        / summary.loc["plain TRL train", "seconds_per_step_median"]
    )
    same_loss = frame.groupby("job")["train_loss_last"].nunique().max() == 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out.with_suffix(".csv"), index=False)
    args.out.with_suffix(".md").write_text(
        "# Harness overhead: `tunebench stage train` vs a plain TRL script\n\n"
        f"measured {measured_on()}; one thread per "
        f"job; {args.repeats} repeats, alternating; tiny-m LoRA r8, {args.steps} steps\n\n"
        + summary.round(3).to_markdown()
        + f"\n\nper-step time, harness / plain: **{ratio:.3f}**\n"
        + f"same final loss in every repeat of both: {same_loss}\n"
        + "\nfixed = wall time of the job's process minus the time inside `trainer.train()` "
        "(for evaluate: minus the time scoring).\n"
    )
    print(summary.round(3).to_string())
    print(f"per-step ratio {ratio:.3f} -> {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
