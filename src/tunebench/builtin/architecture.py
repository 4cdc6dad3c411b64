"""The architecture of a built-in model: a Llama configuration with the sizes of a
spec.BuiltinModel. Pre-training builds its model from it; the estimator traces it. Kept apart
from pretrain.py so that estimating imports neither datasets nor the Trainer."""

from __future__ import annotations


def llama_config(spec, vocab_size: int | None = None, **special_tokens):
    """`vocab_size`: the trained tokenizer's (default: the spec's target size);
    `special_tokens`: bos/eos/pad token ids, once a tokenizer exists."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size or spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        **special_tokens,
    )
