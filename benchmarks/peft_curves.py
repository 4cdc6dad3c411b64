"""The per-step validation curves of a published sweep, for search_replay_published.py: PEFT's
MetaMathQA method comparison (github.com/huggingface/peft, method_comparison/MetaMathQA).
Every configuration fine-tunes meta-llama/Llama-3.2-3B on MetaMathQA for 5,000 steps, is
validated every 250 steps on 50 GSM8K-train questions (accuracy) and tested once at the end on
the 1,319 GSM8K test questions; one result file per configuration (results/*.json).

    python benchmarks/peft_curves.py PEFT_GIT_DIR   # a clone of github.com/huggingface/peft

Reads those files at three commits with git (no network): REPLAYED, the sweep replayed, and
RERUNS, older snapshots of the same files (the same configurations and seed, rerun with other
library versions), from which the replay estimates how much a rerun moves a result. Writes
benchmarks/data/peft-metamathqa-curves.csv, one row per result file and snapshot, each with the
file it came from (a GitHub address at its commit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "data" / "peft-metamathqa-curves.csv"
RESULTS = "method_comparison/MetaMathQA/results"
REPLAYED = "5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40"  # results of PR #3445 and later (2026-07/08)
RERUNS = (
    "a99942694efe9abae7563ab3f973e54942fc98af",  # results of PR #2984 (2026-01)
    "a475f56c8107b7cfee062530a6043c5546410c3d",  # results of PR #2686 (2025-08)
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def row_of(result: dict, commit: str, path: str) -> dict:
    """One result file: its configuration, test accuracy and validation curve ("step:accuracy"
    pairs, space-separated: one row per file keeps the file small)."""
    info, train = result["run_info"], result["train_info"]
    config = info["train_config"]
    metrics = train.get("metrics") or []
    test = [m["test accuracy"] for m in metrics if "test accuracy" in m]
    curve = " ".join(
        f"{m['step']}:{m['valid accuracy']:g}" for m in metrics if "valid accuracy" in m
    )
    return {
        "commit": commit,
        "experiment": info["experiment_name"],
        "family": info["experiment_name"].split("/")[0],
        "learning_rate": config["optimizer_kwargs"].get("lr"),
        "max_steps": config["max_steps"],
        "eval_steps": config["eval_steps"],
        "status": train["status"],
        "test_accuracy": test[-1] if test else None,
        "valid_accuracy_by_step": curve,
        "source": f"https://github.com/huggingface/peft/blob/{commit}/{path}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peft", type=Path, help="a git clone of github.com/huggingface/peft")
    args = parser.parse_args()
    rows = []
    for commit in (REPLAYED, *RERUNS):
        for path in git(args.peft, "ls-tree", "--name-only", commit, f"{RESULTS}/").split():
            if path.endswith(".json"):
                result = json.loads(git(args.peft, "show", f"{commit}:{path}"))
                rows.append(row_of(result, commit, path))
    table = pd.DataFrame(rows).sort_values(["commit", "experiment"], kind="stable")
    table.to_csv(OUT, index=False)
    print(f"{OUT.relative_to(ROOT)}: {len(table)} rows, {table.experiment.nunique()} experiments")


if __name__ == "__main__":
    main()
