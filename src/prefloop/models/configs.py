"""Small model configurations built from scratch (tests, the demo world, benchmarks)."""

from __future__ import annotations

SIZES = {
    # name: (layers, hidden, heads, intermediate)
    "micro": (2, 32, 2, 64),      # unit and smoke tests: milliseconds per step
    "tiny": (4, 256, 4, 1024),    # benchmarks/README.md "tiny" (with a vocabulary of 8,192: ~5.4M parameters)
    "small": (6, 512, 8, 2048),   # benchmarks/README.md "small" (~23M parameters)
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


# Micro configs of the architectures prefloop is tested on (tests/unit/test_architectures.py): each with its
# own logit post-processing switched on where it has one (Gemma soft-capping, Cohere's logit_scale, Granite's
# logits_scaling), so that a training path that skips it shows up as a wrong log-prob.
_ARCH_CONFIGS = {
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=128)),
    "llama": ("LlamaConfig", dict(num_key_value_heads=1)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=1)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=1, head_dim=16)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=1, sliding_window=None)),
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5,
                                    attn_logit_softcapping=50.0, query_pre_attn_scalar=16, sliding_window=8)),
    "gemma3": ("Gemma3TextConfig", dict(num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5,
                                        query_pre_attn_scalar=16, sliding_window=8)),
    "cohere": ("CohereConfig", dict(num_key_value_heads=1, logit_scale=0.25)),
    "granite": ("GraniteConfig", dict(num_key_value_heads=1, logits_scaling=4.0)),
    "phi3": ("Phi3Config", dict(num_key_value_heads=1)),
    "gpt_neox": ("GPTNeoXConfig", dict(rotary_pct=0.5)),
    "opt": ("OPTConfig", dict(ffn_dim=64, word_embed_proj_dim=32, do_layer_norm_before=True)),
    "falcon": ("FalconConfig", dict(new_decoder_architecture=False, multi_query=True, alibi=False)),
}
ARCHITECTURES: tuple[str, ...] = tuple(_ARCH_CONFIGS)

# The config keys that hold a dropout probability in some architecture (set by `arch_config(dropout=p)`).
_DROPOUT_KEYS = ("attention_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "hidden_dropout", "dropout",
                 "activation_dropout", "summary_first_dropout")


def arch_config(arch: str, vocab_size: int, dropout: float = 0.0, **overrides):
    """A micro config (2 layers, width 32) of architecture `arch` (one of ARCHITECTURES), random weights.

    `dropout` sets every dropout probability the config has (attention, hidden, residual, embedding), so
    tests can check that prefloop turns all of them off.
    """
    import transformers

    if arch not in _ARCH_CONFIGS:
        raise ValueError(f"unknown architecture {arch!r} (expected one of {', '.join(ARCHITECTURES)})")
    cls_name, extra = _ARCH_CONFIGS[arch]
    cls = getattr(transformers, cls_name)
    kw = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=False)
    if arch == "opt":
        kw.update(num_hidden_layers=2, ffn_dim=64)
    kw.update(extra)
    known = cls().to_dict()
    kw.update({k: dropout for k in _DROPOUT_KEYS if k in known})
    kw.update(overrides)
    return cls(**kw)
