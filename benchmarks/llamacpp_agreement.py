"""Does llama.cpp itself run an export the way the merged model runs? (heavy, on demand:
`make llamacpp-check EXPORT=results/<experiment>/exports/runs/<run-id>`).

`tunebench export` checks its GGUF files with transformers' GGUF reader. This goes further: it
loads each GGUF in llama.cpp (llama-cpp-python, built here from the same pinned source
distribution as the converter) and compares it with the merged Hugging Face model on held-out
prompts of the run's test split:

- tokenizer: llama.cpp's tokens of each rendered prompt equal the Hugging Face tokenizer's;
- next token: greedy (argmax) agreement over every prompt position, from the same token ids;
- generation: greedy completions of up to 32 tokens, the share identical to the HF model's.

Writes benchmarks/figures/llamacpp_agreement_<experiment>_<method>.{json,md}, naming the
machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tunebench.io import read_json
from tunebench.measure import measured_on

FIGURES = Path(__file__).parent / "figures"


def held_out(manifest: dict, tokenizer, limit: int) -> list[list[int]]:
    """The held-out prompts the export's own check used, as token ids."""
    from tunebench.export.run import heldout_prompts
    from tunebench.matrix import RunConfig

    run = RunConfig.model_validate(read_json(manifest["run"]["train_result"])["config"])
    return heldout_prompts(run, tokenizer, Path(manifest["check"]["test_file"]), limit)


def greedy_hf(model, ids: list[int], steps: int, eos: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=steps,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    return out[0, len(ids) :].tolist()


def greedy_llama(llm, ids: list[int], steps: int, eos: int) -> tuple[list[int], np.ndarray]:
    """Greedy completion from `ids`, and the logits at every prompt position."""
    llm.reset()
    llm.eval(ids)
    prompt_logits = np.array(llm.scores[: len(ids)])
    produced = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        produced.append(token)
        if token == eos:
            break
        llm.eval([token])
    return produced, prompt_logits


def check_file(gguf: Path, model, tokenizer, prompts: list[list[int]], steps: int) -> dict:
    from llama_cpp import Llama

    from tunebench.export.run import compare

    llm = Llama(model_path=str(gguf), n_ctx=1024, logits_all=True, n_threads=2, verbose=False)
    eos = tokenizer.eos_token_id
    same_tokens = same_generation = 0
    theirs_logits, our_logits, examples = [], [], []
    for ids in prompts:
        theirs = llm.tokenize(tokenizer.decode(ids).encode(), add_bos=False, special=True)
        same_tokens += theirs == ids
        produced, logits = greedy_llama(llm, ids, steps, eos)
        theirs_logits.append(torch.from_numpy(logits))
        with torch.no_grad():
            our_logits.append(model(torch.tensor([ids])).logits[0])
        expected = greedy_hf(model, ids, steps, eos)
        same_generation += produced == expected
        if produced != expected and len(examples) < 3:
            examples.append(
                {
                    "llama_cpp": tokenizer.decode(produced, skip_special_tokens=True),
                    "transformers": tokenizer.decode(expected, skip_special_tokens=True),
                }
            )
    n = len(prompts)
    # The same figures as the export's own check (distinct contexts), here from llama.cpp.
    figures = compare(our_logits, theirs_logits, prompts)
    return {
        "file": gguf.name,
        "prompts": n,
        "tokenizer_agreement": same_tokens / n,
        "next_token_agreement": figures["greedy_agreement"],
        "max_abs_logit_diff": figures["max_abs_logit_diff"],
        "positions": figures["positions"],
        "identical_generations": same_generation / n,
        "differing_examples": examples,
    }


def main() -> None:
    import llama_cpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="an export folder (with manifest.json)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=32, help="tokens per greedy completion")
    args = parser.parse_args()
    torch.set_num_threads(2)

    manifest = read_json(args.export / "manifest.json")
    tokenizer = AutoTokenizer.from_pretrained(args.export / "merged")
    model = AutoModelForCausalLM.from_pretrained(args.export / "merged", dtype=torch.float32)
    prompts = held_out(manifest, tokenizer, args.prompts)
    files = [
        check_file(args.export / entry["file"], model, tokenizer, prompts, args.steps)
        for entry in manifest["gguf"]
    ]
    figures = {
        "measured": measured_on(),
        "export": str(args.export),
        "run_id": manifest["run"]["run_id"],
        "llama_cpp_python": llama_cpp.__version__,
        "files": files,
    }
    FIGURES.mkdir(exist_ok=True)
    # results/<experiment>/exports/runs/<run-id>: one file per experiment and method
    experiment = args.export.resolve().parents[2].name
    name = f"llamacpp_agreement_{experiment}_{manifest['run']['method']}"
    (FIGURES / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    lines = [
        f"# llama.cpp vs the merged model: {figures['run_id']}",
        "",
        f"Measured {figures['measured']}; llama-cpp-python {figures['llama_cpp_python']}.",
        "",
        "| file | prompts | same tokens | next-token agreement | max logit diff | identical "
        "generations |",
        "|---|---|---|---|---|---|",
    ]
    for f in files:
        lines.append(
            f"| {f['file']} | {f['prompts']} | {f['tokenizer_agreement']:.3f} | "
            f"{f['next_token_agreement']:.4f} ({f['positions']} contexts) | "
            f"{f['max_abs_logit_diff']:.3g} | {f['identical_generations']:.3f} |"
        )
    (FIGURES / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
