"""LoRA adapters (peft) and the memory switches of a model being trained.

A LoRA model here is the Hugging Face model itself with peft's adapter layers injected into its linear
projections: every forward in prefloop (trunk + LM head, sequence scores, the sampler) runs on it
unchanged. The peft wrapper that owns the adapter stays attached to it, so that

- `model.save_pretrained(dir)` (final models, checkpoints) writes the adapter, which peft loads;
- `adapter_disabled(module)` runs the base weights: the reference policy of PPO, GRPO, RLOO and DPO
  without a second copy of the model in memory;
- `merged(model)` folds the adapter into the weights: a plain model that plain transformers loads.

Under a bf16 computation the frozen base weights are bf16 (`frozen_base_dtype`): they are never updated, so
they need no fp32 master copy. The adapter and a trained score head stay fp32 masters, as every trained weight.

Nothing here imports peft until a LoRA option is used (peft is the optional extra `prefloop[lora]`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

from prefloop.errors import InputError

# Attributes of the HF model: its peft wrapper (set without registering a submodule), and the directory
# its adapter was loaded from.
_PEFT, _SOURCE = "_prefloop_peft_model", "_prefloop_adapter_dir"
ADAPTER_CONFIG = "adapter_config.json"


class LoraUnavailable(InputError):
    """A LoRA option was given but peft is not installed (or an adapter directory cannot be used)."""


def _has_peft() -> bool:
    return importlib.util.find_spec("peft") is not None


def require_peft(what: str = "--lora-r") -> None:
    if not _has_peft():
        raise LoraUnavailable(f"{what} needs peft: pip install 'prefloop[lora]'")


def is_adapter_dir(path) -> bool:
    return Path(str(path)).expanduser().joinpath(ADAPTER_CONFIG).is_file()


def adapter_base(path) -> str:
    """The base model an adapter directory was trained on (`base_model_name_or_path` of its config)."""
    cfg_file = Path(str(path)).expanduser() / ADAPTER_CONFIG
    try:
        base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise LoraUnavailable(f"{cfg_file}: cannot read the adapter config ({e})") from None
    if not base:
        raise LoraUnavailable(f"{cfg_file}: names no base model (base_model_name_or_path)")
    return str(base)


def peft_model(model: nn.Module):
    """The peft wrapper of a LoRA model, or None for a plain model."""
    return model.__dict__.get(_PEFT)


def _attach(peft, base: nn.Module, source: str | None = None) -> nn.Module:
    # object.__setattr__: a plain reference, not a submodule (the wrapper contains `base`; registering it
    # would make `base.modules()` recurse). Saving the model saves its adapter, wherever it is saved.
    object.__setattr__(base, _PEFT, peft)
    object.__setattr__(base, _SOURCE, source)
    object.__setattr__(base, "save_pretrained", functools.partial(_save_adapter, peft, base))
    return base


def _save_adapter(peft, base: nn.Module, path, state_dict: dict | None = None, **kwargs) -> None:
    """peft's `save_pretrained`. A `state_dict` given (a sharded model's gathered weights) is keyed as `base`
    names its tensors; peft picks the adapter out of its own keys (`base_model.model.` + those), and would
    find nothing in `base`'s: an empty adapter."""
    if state_dict is not None:
        prefix = next(name for name, m in peft.named_modules() if m is base) + "."
        state_dict = {prefix + k: v for k, v in state_dict.items()}
    peft.save_pretrained(path, state_dict=state_dict, **kwargs)


def _detach(base: nn.Module) -> str | None:
    base.__dict__.pop(_PEFT, None)
    base.__dict__.pop("save_pretrained", None)
    return base.__dict__.pop(_SOURCE, None)


def add_lora(model: nn.Module, r: int, alpha: float, dropout: float, target_modules: str | None,
             reward: bool = False) -> nn.Module:
    """Inject a new LoRA adapter; only its matrices (and a reward model's score head) train afterwards.

    Default targets: every linear projection of the transformer blocks (attention and MLP), peft's
    "all-linear", which leaves out the LM head and the score head."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in target_modules.split(",") if t.strip()] if target_modules else "all-linear"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="SEQ_CLS" if reward else "CAUSAL_LM",
                        # The reward head is new or task-specific: trained in full, saved with the adapter.
                        modules_to_save=["score"] if reward else None)
    try:
        peft = get_peft_model(model, config)
    except ValueError as e:
        raise LoraUnavailable(f"--lora-target-modules {target_modules}: {str(e).splitlines()[0]}") from None
    return _attach(peft, peft.get_base_model())


def load_adapter(base: nn.Module, adapter_dir) -> nn.Module:
    """`base` with the adapter saved in `adapter_dir` (frozen: `prepare_for_training` decides what trains)."""
    require_peft(f"{adapter_dir} (a LoRA adapter)")
    from peft import PeftModel

    try:
        peft = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except Exception as e:  # noqa: BLE001 - peft and safetensors raise many types; name the directory
        raise LoraUnavailable(f"{adapter_dir}: cannot load the LoRA adapter: {' '.join(str(e).split())[:300]}") \
            from None
    return _attach(peft, peft.get_base_model(), str(adapter_dir))


def merged(model: nn.Module) -> nn.Module:
    """The adapter folded into the base weights (in place): a plain model; a plain model is returned as is.

    A bf16 frozen base is brought back to fp32 first, so the adapter's update is added at full precision,
    not rounded to bf16's ulp of each weight; saving then casts to the run's `--dtype` like any model."""
    peft = peft_model(model)
    if peft is None:
        return model
    _cast_frozen(model, torch.float32)
    source = _detach(model)
    plain = peft.merge_and_unload()
    if source is not None:
        # An adapter trained on this merged model records its base as this directory, where the loader
        # finds (and merges) the same weights again.
        plain.name_or_path = source
    return plain


@contextlib.contextmanager
def adapter_disabled(module: nn.Module):
    """Run `module` (a model or any module around one) on its base weights: every LoRA layer and a
    trained copy of the score head are bypassed inside the block. A no-op for a model without adapters."""
    layers = []
    if _has_peft():
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import ModulesToSaveWrapper

        layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer | ModulesToSaveWrapper)]
    try:
        for m in layers:
            m.enable_adapters(False)
        yield module
    finally:
        for m in layers:
            m.enable_adapters(True)


class WithoutAdapter(nn.Module):
    """A forward module run with the adapter disabled and no gradient: the reference of a LoRA policy
    (the same weights; the reference is a constant of the loss, never differentiated)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        with adapter_disabled(self.inner), torch.no_grad():
            return self.inner(*args, **kwargs)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (the adapter and head vs. everything, for a LoRA model)."""
    params = {id(p): p for p in model.parameters()}.values()
    return {"params/trainable": sum(p.numel() for p in params if p.requires_grad),
            "params/total": sum(p.numel() for p in params)}


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them. Non-reentrant
    checkpointing: the same gradients as without, also when the inputs of a block need no gradient."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if peft_model(model) is not None:
        # The embeddings are frozen under LoRA; peft's recipe for checkpointed adapters keeps their
        # output in the graph, which reentrant checkpointing (a user's override) needs.
        model.enable_input_require_grads()


def frozen_base_dtype(opts) -> torch.dtype:
    """The dtype of a LoRA model's frozen base: bf16 when the computation is bf16 (as for the frozen models
    of `runtime.accel.frozen_dtype`), float32 otherwise (fp16 weights could overflow; fp32 changes nothing)."""
    from .precision import frozen_dtype

    precision = getattr(opts, "precision", "fp32")
    return frozen_dtype(precision) if precision in ("auto", "bf16") else torch.float32


def _cast_frozen(model: nn.Module, dtype: torch.dtype) -> None:
    """Every frozen floating-point parameter in `dtype`, the trained ones (adapter, score head) untouched.

    Norms and embeddings are frozen base weights too and go to bf16 with the rest: then the adapter-disabled
    policy is exactly the bf16 reference that `frozen_dtype` would load (transformers' RMSNorm computes in
    fp32 internally either way), and they are a negligible share of the memory. `.data` keeps tied weights
    (embedding and LM head) one tensor. Buffers (rotary frequencies) keep their dtype, as in any loaded model."""
    for p in {id(p): p for p in model.parameters()}.values():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def _head_inputs_in_weight_dtype(model: nn.Module) -> None:
    """The fp32 trained score head reads the bf16 trunk's hidden states: cast them to its dtype. Under
    autocast the head runs in bf16 anyway; outside it (sampling, scoring a rollout) fp32 x bf16 would fail."""
    from peft.utils import ModulesToSaveWrapper

    def cast(module, args):
        dtype = module.weight.dtype
        return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    for wrapper in (m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)):
        for head in wrapper.modules_to_save.values():
            if not getattr(head, "_prefloop_casts_input", False):
                head.register_forward_pre_hook(cast)
                head._prefloop_casts_input = True


def prepare_for_training(model: nn.Module, opts, resumed: bool = False, reward: bool = False) -> nn.Module:
    """Apply the memory options (`LoraOptions`/`MemoryOptions` fields of a config) to a loaded model.

    An adapter loaded with the model continues training when `resumed` (it is the run's own checkpoint);
    otherwise it belongs to an earlier stage and is merged first. Then a new adapter if --lora-r is set.
    With an adapter under a bf16 computation (`opts.precision`) the frozen base goes to bf16."""
    r = getattr(opts, "lora_r", 0) or 0
    if peft_model(model) is not None and not (resumed and r):
        # peft froze the base weights when it attached the adapter; the merged model trains in full
        model = merged(model).requires_grad_(True)
    if peft_model(model) is not None:
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name or "modules_to_save" in name)
    elif r:
        model = add_lora(model, r, opts.lora_alpha, opts.lora_dropout, opts.lora_target_modules, reward=reward)
    if peft_model(model) is not None and frozen_base_dtype(opts) != torch.float32:
        _cast_frozen(model, frozen_base_dtype(opts))
        _head_inputs_in_weight_dtype(model)
    if getattr(opts, "gradient_checkpointing", False):
        enable_gradient_checkpointing(model)
    return model


def for_saving(model: nn.Module, merge: bool) -> nn.Module:
    """What a run's final OUT/model holds: the adapter, or with --merge-lora the merged plain model."""
    return merged(model) if merge else model
