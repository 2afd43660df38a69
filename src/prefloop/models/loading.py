"""Load policies, reward models and tokenizers: any Hugging Face causal LM by local path or hub id."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from prefloop.errors import ModelLoadError


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and Path(name).parent.exists() and not _hub_like(name)


def _hub_like(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts) and not Path(parts[0]).exists()


def _from_pretrained(loader, name: str, what: str, **kwargs):
    """Local directories load directly; hub ids try the local cache first, then the Hub (unless offline)."""
    name = str(name)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{name}: {what} path is a file, expected a Hugging Face model directory")
        try:
            return loader(str(path), **kwargs)
        except Exception as e:  # noqa: BLE001 - transformers, safetensors and hub raise many types; name the file
            raise ModelLoadError(_load_error(path, name, what, e)) from None
    if _looks_local(name):
        raise ModelLoadError(f"{name}: {what} directory does not exist")
    try:
        return loader(name, local_files_only=True, **kwargs)
    except Exception as cached_error:  # noqa: BLE001 - any failure means "not in the cache"
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelLoadError(f"{name}: no local directory and not in the Hugging Face cache (offline mode): "
                                 f"{str(cached_error).splitlines()[0]}") from None
    try:
        return loader(name, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{name}: no local directory of that name and the Hub could not provide {what}: "
                             f"{str(e).splitlines()[0]}") from None


def _load_error(path: Path, name: str, what: str, e: Exception) -> str:
    """One line naming the file of a local model directory that failed to load, and why."""
    text = " ".join(str(e).split())[:300]
    kind = type(e).__module__ + "." + type(e).__name__
    if "safetensors" in kind:
        weights = sorted(path.glob("*.safetensors"))
        where = ", ".join(str(w) for w in weights[:2]) or str(path)
        return f"{where}: corrupt or truncated weights, cannot load {what} ({text})"
    if "Dataclass" in kind or "config" in text.lower():
        return f"{path / 'config.json'}: cannot load {what}: {text}"
    return f"{name}: cannot load {what}: {text}"


# A local directory needs one of these to hold a tokenizer (tokenizer_config.json alone does not).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    from prefloop.data import ensure_pad_token

    path = Path(str(name)).expanduser()
    if path.is_dir() and not any((path / f).exists() for f in TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        raise ModelLoadError(f"{name}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); copy the "
                             "tokenizer of the model it was trained from into this folder")
    tok = _from_pretrained(AutoTokenizer.from_pretrained, name, "tokenizer")
    ensure_pad_token(tok)
    return tok


# Config fields that hold a dropout probability. Attention dropout in particular is no module: the HF
# attention classes copy `config.attention_dropout` into a float at init and pass it to the attention kernel
# in training mode (Llama, Qwen2, Phi-3, GPT-NeoX...), and Falcon reads `config.hidden_dropout` at every
# forward. Zeroing `nn.Dropout` modules alone leaves all of those on.
def _is_dropout_name(name: str) -> bool:
    return "dropout" in name or name.endswith("pdrop")


def disable_dropout(model: nn.Module) -> nn.Module:
    """Every dropout off (docs/ppo.md item 12): log-probs must be deterministic functions of the weights, also in
    training mode. Zeroes `nn.Dropout` modules, dropout probabilities that modules keep as plain numbers,
    and the dropout fields of the model's configs (so the saved config.json says what training used)."""
    configs = {}
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for key, value in list(vars(m).items()):
            if _is_dropout_name(key) and isinstance(value, float):
                setattr(m, key, 0.0)
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            configs[id(config)] = config
    for config in list(configs.values()):
        subs = [getattr(config, k) for k in getattr(config, "sub_configs", {}) if getattr(config, k, None)]
        for c in [config, *subs]:
            for key, value in list(vars(c).items()):
                if _is_dropout_name(key) and isinstance(value, float):
                    setattr(c, key, 0.0)
    return model


def _sync_special_tokens(model, tokenizer) -> None:
    if tokenizer is None:
        return
    weight = model.get_input_embeddings().weight
    # A ZeRO-3 partitioned weight has shape 0 and its real shape in ds_shape: resizing on shape 0 would shrink it.
    if len(tokenizer) > getattr(weight, "ds_shape", weight.shape)[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def _dtype_kwargs(dtype: torch.dtype | None, attn_implementation: str | None = None) -> dict:
    # Trained models keep fp32 master weights whatever dtype the checkpoint was saved in (transformers 5
    # loads the saved dtype by default, and AdamW on bf16 weights loses updates smaller than their ulp).
    kwargs = {"dtype": dtype if dtype is not None else torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def _adapter_model(load, name: str, **kwargs):
    """A LoRA adapter directory (see prefloop.models.lora): its base model, then the adapter. The base may
    itself be an adapter directory (an adapter trained on an earlier stage's adapter names that one as its
    base): it loads the same way and is merged first. None when `name` is no adapter directory."""
    from .lora import adapter_base, is_adapter_dir, load_adapter, merged

    if not is_adapter_dir(name):
        return None
    return load_adapter(merged(load(adapter_base(name), **kwargs)), str(name))


def load_causal_lm(name: str, tokenizer=None, dtype: torch.dtype | None = None,
                   attn_implementation: str | None = None):
    """A causal LM in `dtype` (default float32: the master weights of a model to train), dropout off, its
    output head checked against its own forward (`prefloop.models.checks.check_logits`). A LoRA adapter
    directory loads as its base model with the adapter attached."""
    from transformers import AutoModelForCausalLM

    from prefloop.errors import LogitsMismatchError

    from .checks import check_logits
    from .fused import fuse_activations

    adapted = _adapter_model(load_causal_lm, name, tokenizer=tokenizer, dtype=dtype,
                             attn_implementation=attn_implementation)
    if adapted is not None:
        return adapted
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, name, "causal language model",
                             **_dtype_kwargs(dtype, attn_implementation))
    _sync_special_tokens(model, tokenizer)
    fuse_activations(model)  # before the check, so that it checks the modules that will run
    try:
        check_logits(model, str(name))
    except LogitsMismatchError as e:
        raise ModelLoadError(str(e)) from None
    return disable_dropout(model)


def init_score_head(model) -> None:
    """Reward head ~ N(0, 1/sqrt(d_model + 1)), bias 0 (docs/ppo.md item 9; Ziegler et al. 2019)."""
    head = model.score
    d = head.weight.shape[-1]
    nn.init.normal_(head.weight, std=1.0 / math.sqrt(d + 1))
    if head.bias is not None:
        nn.init.zeros_(head.bias)


def load_reward_model(name: str, tokenizer=None, dtype: torch.dtype | None = None, new_head: bool = False,
                      attn_implementation: str | None = None):
    """A sequence classifier with one output. `new_head=True` starts it from a causal LM checkpoint. A LoRA
    adapter directory loads as its base model with the adapter and its trained score head attached."""
    from transformers import AutoModelForSequenceClassification

    from prefloop.errors import LogitsMismatchError

    from .checks import check_scores
    from .fused import fuse_activations

    adapted = _adapter_model(load_reward_model, name, tokenizer=tokenizer, dtype=dtype, new_head=new_head,
                             attn_implementation=attn_implementation)
    if adapted is not None:
        return adapted
    model = _from_pretrained(AutoModelForSequenceClassification.from_pretrained, name, "reward model",
                             num_labels=1, **_dtype_kwargs(dtype, attn_implementation))
    if not hasattr(model, "score"):
        raise ModelLoadError(f"{name}: architecture {type(model).__name__} has no `score` head; "
                             "prefloop reads rewards from causal-LM sequence classifiers")
    model.config.id2label = {0: "reward"}
    model.config.label2id = {"reward": 0}
    _sync_special_tokens(model, tokenizer)
    if new_head:
        init_score_head(model)
    fuse_activations(model)
    try:
        check_scores(model, str(name))
    except LogitsMismatchError as e:
        raise ModelLoadError(str(e)) from None
    return disable_dropout(model)
