"""Small model configurations built from scratch (tests, the demo world, benchmarks)."""

from __future__ import annotations

SIZES = {
    # name: (layers, hidden, heads, intermediate)
    "micro": (2, 32, 2, 64),      # unit and smoke tests: milliseconds per step
    "tiny": (4, 256, 4, 1024),    # BENCHMARKS.md "tiny" (with a vocabulary of 8,192: ~5.4M parameters)
    "small": (6, 512, 8, 2048),   # BENCHMARKS.md "small" (~23M parameters)
    "demo": (4, 128, 4, 384),     # the demo world's base model (~1M parameters with a ~1k vocabulary)
    "demo-tiny": (2, 96, 4, 256),
}


def llama_config(vocab_size: int, size: str = "micro", max_positions: int = 512, **overrides):
    """A Llama-architecture config (RoPE, RMSNorm, SwiGLU), untied embeddings, no dropout."""
    from transformers import LlamaConfig

    layers, hidden, heads, inter = SIZES[size]
    kw = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
              num_key_value_heads=heads, intermediate_size=inter, max_position_embeddings=max_positions,
              attention_dropout=0.0, tie_word_embeddings=False, rms_norm_eps=1e-5)
    kw.update(overrides)
    return LlamaConfig(**kw)


def gpt2_config(vocab_size: int, size: str = "micro", max_positions: int = 512, **overrides):
    """A GPT-2-architecture config (learned absolute positions), dropout off."""
    from transformers import GPT2Config

    layers, hidden, heads, inter = SIZES[size]
    kw = dict(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_inner=inter,
              n_positions=max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    kw.update(overrides)
    return GPT2Config(**kw)
