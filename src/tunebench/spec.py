"""The experiment file: a pydantic model whose JSON schema is exported to workflow/schemas/.

One experiment = models x methods (with their axes) x datasets x seeds, shaped by include/exclude.
Unknown keys are errors everywhere (extra="forbid").
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunebench.data.formats import FORMATS

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
PositiveInt = Annotated[int, Field(gt=0, le=1_000_000)]
PositiveFloat = Annotated[float, Field(gt=0, le=1e6)]
Dtype = Literal["bfloat16", "float16", "float32"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def as_list(value: Any) -> Any:
    """Axes accept a scalar or a list; a scalar is a one-value axis."""
    return value if isinstance(value, list) else [value]


# ---------------------------------------------------------------- models


class BuiltinModel(Strict):
    """A tiny Llama-architecture model built from this config and pre-trained locally."""

    corpus: Literal["wordops"] = "wordops"
    corpus_words: PositiveInt = Field(600, description="lexicon size of the pre-training corpus")
    corpus_seed: int = 0
    vocab_size: Annotated[int, Field(ge=300, le=65536)] = 512
    hidden_size: PositiveInt = 64
    intermediate_size: PositiveInt = 192
    layers: PositiveInt = 2
    heads: PositiveInt = 4
    max_position_embeddings: PositiveInt = 256
    pretrain_steps: PositiveInt = 600
    pretrain_batch_size: PositiveInt = 32
    pretrain_learning_rate: PositiveFloat = 3e-3
    block_size: PositiveInt = 64
    seed: int = 0

    @model_validator(mode="after")
    def heads_divide_hidden(self) -> BuiltinModel:
        if self.hidden_size % self.heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}"
            )
        return self


class ModelSpec(Strict):
    """Exactly one of `hub`, `path` or `builtin`."""

    name: Name
    hub: str | None = Field(None, description="Hugging Face hub id, e.g. meta-llama/Llama-3.2-1B")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    path: str | None = Field(None, description="local folder with a saved model and tokenizer")
    builtin: BuiltinModel | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def one_source(self) -> ModelSpec:
        given = [k for k in ("hub", "path", "builtin") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of hub, path, builtin (got {given or 'none'})")
        if self.revision is not None and self.hub is None:
            raise ValueError("revision only applies to a hub model")
        return self

    @property
    def source(self) -> str:
        return "hub" if self.hub else "path" if self.path else "builtin"


# ---------------------------------------------------------------- methods


Backend = Literal["hf", "unsloth"]
# What Unsloth's FastLanguageModel can train; the rest is rejected at validation, not at training.
UNSLOTH_METHODS = ("full", "lora", "rslora", "qlora")


class MethodBase(Strict):
    label: Name | None = None
    backend: list[Backend] = Field(
        ["hf"],
        min_length=1,
        description="hf: transformers + PEFT + bitsandbytes; unsloth: Unsloth's FastLanguageModel "
        "in its own environment. A list is a matrix axis: [hf, unsloth] runs both side by side.",
    )

    _backend_list = field_validator("backend", mode="before")(as_list)

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


class FullMethod(MethodBase):
    method: Literal["full"]
    learning_rate: PositiveFloat | list[PositiveFloat] | None = None

    _as_list = field_validator("learning_rate", mode="before")(
        lambda v: None if v is None else as_list(v)
    )


AdapterRank = Annotated[int, Field(gt=0, le=65536)]


class LoraMethod(MethodBase):
    """LoRA and its variants: `dora` (weight-decomposed), `rslora` (rank-stabilised scaling)."""

    method: Literal["lora", "dora", "rslora"]
    ranks: list[AdapterRank] = Field(min_length=1)
    alpha: list[PositiveFloat] | None = None
    alpha_ratio: list[PositiveFloat] | None = Field(
        None, description="alpha = ratio x rank (default 2 when neither alpha nor alpha_ratio)"
    )
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[Name] = "all-linear"
    learning_rate: list[PositiveFloat] | None = None

    _as_list = field_validator("ranks", "alpha", "alpha_ratio", "learning_rate", mode="before")(
        lambda v: None if v is None else as_list(v)
    )

    @model_validator(mode="after")
    def alpha_or_ratio(self):
        if self.alpha is not None and self.alpha_ratio is not None:
            raise ValueError("give alpha or alpha_ratio, not both")
        return self


class Quantization(Strict):
    """bitsandbytes 4-bit settings for QLoRA."""

    quant_type: list[Literal["nf4", "fp4"]] = ["nf4"]
    double_quant: list[bool] = [True]
    compute_dtype: list[Dtype] = ["bfloat16"]

    _as_list = field_validator("quant_type", "double_quant", "compute_dtype", mode="before")(
        as_list
    )


class QLoraMethod(LoraMethod):
    method: Literal["qlora"]
    quantization: Quantization

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


# ---------------------------------------------------------------- data, training, evaluation


METRIC_NAMES = (
    "exact_match",
    "exact_match_normalised",
    "answer_accuracy",
    "rouge_l",
    "bleu",
    "chrf",
    "multiple_choice_accuracy",
)


class HubDataset(Strict):
    """A Hugging Face hub dataset (or anything `datasets.load_dataset` accepts)."""

    id: str
    config: str | None = None
    split: str | None = Field(
        None,
        description="one split to load and split by fractions; default: the dataset's own "
        "train/validation/test splits when it has them",
    )
    revision: str | None = None


class SplitFiles(Strict):
    """A dataset that comes already split: one file per split."""

    train: str
    validation: str | None = None
    test: str


class DatasetEvaluation(Strict):
    """How a dataset is scored. Not part of dataset keys or run ids: changing it re-scores only."""

    metrics: list[Literal[METRIC_NAMES]] = Field(
        ["exact_match", "exact_match_normalised"], min_length=1
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
    """Exactly one source: builtin, path (one file), files (one per split) or hub."""

    name: Name
    builtin: Literal["wordops"] | None = None
    path: str | None = Field(None, description="a .jsonl/.json/.csv/.tsv/.parquet file")
    files: SplitFiles | None = None
    hub: HubDataset | None = None
    format: Literal[("auto", *FORMATS)] = "auto"
    columns: dict[str, str] = Field(
        {},
        description="canonical field -> column in your data, "
        "e.g. {instruction: question, output: answer}",
    )
    system_prompt: str | None = None
    template: Literal["auto", "model", "alpaca", "chatml", "custom"] = Field(
        "auto", description="auto: the model's chat template if it has one, else alpaca"
    )
    custom_template: str | None = Field(
        None, description="a Jinja chat template (template: custom)"
    )
    loss_on: Literal["response", "all"] = "response"
    n_words: PositiveInt = Field(600, description="built-in wordops: size of the lexicon")
    operations: list[Literal["reverse", "first", "last", "count"]] = [
        "reverse",
        "first",
        "last",
        "count",
    ]
    test_fraction: float | None = Field(None, gt=0, lt=1, description="default 0.15")
    validation_fraction: float | None = Field(None, ge=0, lt=1, description="default 0.05")
    test_size: PositiveInt | None = Field(None, description="a count instead of a fraction")
    validation_size: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    split_seed: int = 0
    deduplicate: bool = True
    leakage: Literal["remove", "report"] = Field(
        "remove", description="held-out prompts that also occur in train"
    )
    bad_rows: Literal["error", "skip"] = Field("error", description="skip: count and drop them")
    too_long: Literal["drop", "truncate"] = Field(
        "drop", description="examples over training.max_length"
    )
    evaluation: DatasetEvaluation = DatasetEvaluation()

    @model_validator(mode="after")
    def consistent(self):
        given = [k for k in ("builtin", "path", "files", "hub") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of builtin, path, files, hub (got {given or 'none'})"
            )
        if self.test_fraction is not None and self.test_size is not None:
            raise ValueError("give test_fraction or test_size, not both")
        if self.validation_fraction is not None and self.validation_size is not None:
            raise ValueError("give validation_fraction or validation_size, not both")
        if (self.test_fraction or 0) + (self.validation_fraction or 0) >= 1:
            raise ValueError("test_fraction + validation_fraction must leave training data")
        if (self.template == "custom") != (self.custom_template is not None):
            raise ValueError("template: custom goes with custom_template (a Jinja template)")
        return self


class Training(Strict):
    max_steps: PositiveInt | None = None
    epochs: PositiveFloat | None = None
    learning_rate: PositiveFloat = 2e-4
    batch_size: PositiveInt = 8
    gradient_accumulation: PositiveInt = 1
    max_length: PositiveInt = 512
    seeds: list[int] = Field([0], min_length=1)
    optimizer: str = Field("adamw_torch", description="a transformers `optim` name")
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    packing: bool = False
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, else fp32"
    )
    logging_steps: PositiveInt = 10
    save_steps: PositiveInt | None = Field(
        None,
        description="checkpoint interval; a killed or preempted run resumes from the last "
        "checkpoint (default: no intermediate checkpoints)",
    )
    deterministic: bool = Field(
        False,
        description="deterministic kernels (torch.use_deterministic_algorithms); slower "
        "on GPUs, and some ops then raise instead of running non-deterministically",
    )

    _as_list = field_validator("seeds", mode="before")(as_list)

    @model_validator(mode="after")
    def steps_or_epochs(self):
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_steps, epochs")
        return self


class HarnessTasks(Strict):
    """lm-evaluation-harness tasks, run on the base model and every fine-tuned model."""

    tasks: list[str] = Field(min_length=1, description="task or group names, e.g. [hellaswag]")
    include_path: str | None = Field(None, description="a folder of your own task YAML files")
    num_fewshot: Annotated[int, Field(ge=0, le=100)] | None = None
    limit: PositiveInt | None = Field(None, description="examples per task (all by default)")
    batch_size: PositiveInt = 8


class Evaluation(Strict):
    lm_eval: HarnessTasks | None = Field(None, description="optional lm-evaluation-harness tasks")
    max_new_tokens: PositiveInt = 32
    batch_size: PositiveInt = 32
    max_examples: PositiveInt | None = Field(None, description="cap on test examples scored")


class Cost(Strict):
    """Price per accelerator-hour, keyed by a substring of the accelerator name ("A100", "cpu")."""

    price_per_hour: dict[str, Annotated[float, Field(ge=0)]] = {"cpu": 0.0}
    currency: str = "USD"


class JobResources(Strict):
    """What one Snakemake job asks the scheduler for (Slurm: --gpus, --mem, --time, ...)."""

    gpus: Annotated[int, Field(ge=0, le=64)] | None = None
    gpu_model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]+$")] | None = Field(
        None, description="e.g. a100, h100 (Slurm --gpus=MODEL:N)"
    )
    cpus_per_gpu: PositiveInt | None = None
    mem_gb: PositiveFloat | None = None
    runtime_minutes: PositiveInt | None = None


class ResourceOverride(Strict):
    """Resources for the runs whose fields all match (like an exclude selector)."""

    match: dict[str, Any] = Field(min_length=1)
    train: JobResources = JobResources()
    evaluate: JobResources = JobResources()


class Resources(Strict):
    """What jobs may use. `threads` is also the torch thread count (Slurm: cpus per task)."""

    threads: PositiveInt = 1
    partition: str | None = Field(
        None,
        description="Slurm partition; default $TUNEBENCH_SLURM_PARTITION, else the "
        "cluster's default",
    )
    account: str | None = Field(None, description="Slurm account; default $TUNEBENCH_SLURM_ACCOUNT")
    train: JobResources = JobResources(mem_gb=8, runtime_minutes=120)
    evaluate: JobResources = JobResources(mem_gb=8, runtime_minutes=60)
    default: JobResources = Field(
        JobResources(mem_gb=4, runtime_minutes=60),
        description="data preparation, pre-training, the table",
    )
    overrides: list[ResourceOverride] = []
    memory_limit_gb: PositiveFloat | None = Field(
        None,
        description="stop a run whose process memory (RSS) exceeds this, as an `oom` row: "
        "the CPU counterpart of a CUDA out-of-memory",
    )


class Tracking(Strict):
    wandb: bool = Field(False, description="log to W&B (offline unless WANDB_API_KEY is set)")
    project: str = "tunebench"


Selector = dict[str, Any]


class Experiment(Strict):
    name: Name
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    datasets: list[DatasetSpec] = Field(min_length=1)
    training: Training
    evaluation: Evaluation = Evaluation()
    cost: Cost = Cost()
    resources: Resources = Resources()
    tracking: Tracking = Tracking()
    include: list[Selector] = Field([], description="extra runs: {model, method, rank, ...}")
    exclude: list[Selector] = Field([], description="drop runs whose fields all match")

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
        elif part in ("full", "lora", "dora", "rslora", "qlora") or re.fullmatch(
            r"function-(before|after|wrap)\[.*\]", str(part)
        ):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"
