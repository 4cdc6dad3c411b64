"""Preference tuning (methods[].objective: dpo or orpo) with TRL's DPOTrainer and ORPOTrainer.

The pairs come from the tokenize rule: a preference dataset's tokenised split holds the prompt
and the chosen response (input_ids, split at prompt_length) and the rejected response
(rejected_ids), rendered by the same chat template as SFT data. The trainers get exactly these
ids, and evaluation scores exactly these ids (evaluate.preference_scores), so what a run is
trained to prefer and what it is scored on are the same tokens.
"""

from __future__ import annotations

from trl import DPOConfig, DPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from tunebench.data.tokenize import REJECTED
from tunebench.outcomes import StageFailure

# The columns the preference trainers read (DataCollatorForPreference's names).
PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def pairs(dataset, max_length: int, too_long: str, dataset_name: str):
    """A tokenised split as (prompt_ids, chosen_ids, rejected_ids) rows. A pair whose longer
    side exceeds max_length is dropped (default) or has both responses cut to fit, as
    train.fit_length does for SFT. Returns the pairs and how many were affected."""
    if REJECTED not in dataset.column_names:
        raise StageFailure(
            f"dataset {dataset_name!r} has no rejected responses: objective dpo/orpo needs "
            "preference rows (prompt, chosen, rejected). Set datasets[].format: preference "
            "(and columns: to map your fields), or train this dataset with objective sft"
        )

    def split(example):
        cut = example["prompt_length"]
        return {
            "prompt_ids": example["input_ids"][:cut],
            "chosen_ids": example["input_ids"][cut:],
            "rejected_ids": example[REJECTED],
        }

    def longest(pair) -> int:
        return len(pair["prompt_ids"]) + max(len(pair["chosen_ids"]), len(pair["rejected_ids"]))

    rows = dataset.map(split, remove_columns=dataset.column_names)
    over = sum(longest(pair) > max_length for pair in rows)
    if too_long == "truncate":
        room = max_length

        def cut(pair):
            keep = max(room - len(pair["prompt_ids"]), 1)
            return {
                "chosen_ids": pair["chosen_ids"][:keep],
                "rejected_ids": pair["rejected_ids"][:keep],
            }

        return rows.map(cut), over
    return rows.filter(lambda pair: longest(pair) <= max_length), over


class PairsDPOTrainer(DPOTrainer):
    """DPOTrainer on pairs that are already tokenised. TRL 1.16 tokenises prompt and responses
    text itself (adding the tokenizer's special tokens) and has no switch for tokenised pairs;
    ours are tokenised once per dataset and tokenizer with the template's own special tokens,
    so its preparation step is skipped rather than re-deriving the same ids from text."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


class PairsORPOTrainer(ORPOTrainer):
    """ORPOTrainer on tokenised pairs: its row tokeniser (text in, prompt/chosen/rejected
    input ids, masks and labels out) becomes a reshaping of the ids we already have."""

    def tokenize_row(self, feature, model=None) -> dict:
        prompt = list(feature["prompt_ids"])
        row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side in ("chosen", "rejected"):
            response = list(feature[f"{side}_ids"])
            row[f"{side}_input_ids"] = prompt + response
            row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(response))
            row[f"{side}_labels"] = [-100] * len(prompt) + response  # loss on the response only
        return row


def trainer(run, arguments: dict, model, peft_config, tokenizer, train_set, callbacks):
    """The objective's trainer, with the shared TrainingArguments (train.trainer_arguments).
    DPO's reference is the starting model: the base (or the SFT run of start_from), which
    DPOTrainer gets by disabling the adapter (LoRA runs), by keeping a frozen copy of the
    starting adapter ("ref", when continuing an SFT adapter) or by loading a second copy of the
    starting weights (full fine-tuning). ORPO has no reference."""
    max_length = run.training.max_length
    if run.objective == "dpo":
        config = DPOConfig(
            **arguments, beta=run.beta, loss_type=[run.loss_type], max_length=max_length
        )
        cls = PairsDPOTrainer
    else:
        # The ORPO collator pads columns by name, so nothing else may be dropped.
        config = ORPOConfig(
            **arguments, beta=run.beta, max_length=max_length, remove_unused_columns=False
        )
        cls = PairsORPOTrainer
    return cls(
        model=model,
        args=config,
        train_dataset=train_set,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
