"""Sharded training (FSDP2 through accelerate): what is sharded, how sharded weights are used outside the
training forward, and how they are saved and restored.

Under FSDP2 (`accelerate launch --config_file examples/accelerate/fsdp2.yaml`) accelerate applies torch's
`fully_shard` to each transformer block and then to the prepared module as a whole: every process holds 1/N of
each parameter, gradient and optimizer state, and a block's parameters are all-gathered only around its forward
and backward, by hooks on the module that was prepared. Three things follow, each handled here:

- **Calls that do not go through the prepared module's forward** (the sampler's KV-cache decode, which calls the
  language model and its output head itself; evaluation on the unwrapped model) would meet sharded weights:
  `gathered(acc, module)` all-gathers every shard of the prepared module for the length of the block, and frees
  them after it.
- **Saving** is collective: every process takes part in gathering the full weights
  (`full_state_dict`, `full_optimizer_state`), and the main process writes them as a plain Hugging Face
  directory (safetensors) that `from_pretrained` loads.
- **Resume** loads those full weights on every process before `prepare` shards them again, and the full
  optimizer state after it (`load_full_optimizer_state`), so a checkpoint does not depend on how it was sharded.

accelerate turns FSDP on only where there are GPUs; on a machine without one, `enable_on_cpu` switches the same
code path on for the gloo backend (that is how the CPU tests run it). FSDP1 and DeepSpeed are refused with one
line (see `check_supported`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from prefloop.errors import ConfigError


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("true", "1", "yes")


def requested() -> str | None:
    """The sharding `accelerate launch` asked for through its environment: "fsdp2", "fsdp1", "deepspeed" or None."""
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _env_true("ACCELERATE_USE_FSDP"):
        return "fsdp2" if os.environ.get("FSDP_VERSION", "1") == "2" else "fsdp1"
    return None


def check_supported() -> None:
    """Refuse, in one line, the sharded launches prefloop does not run correctly, before any model loads.

    FSDP1 flattens parameters into per-process shards: the sampler and the saved model would see the flat
    shards. DeepSpeed has its own checks (`prefloop.runtime.deepspeed`)."""
    kind = requested()
    if kind == "fsdp1":
        raise ConfigError("FSDP1 (fsdp_version: 1) is not supported: use FSDP2, fsdp_version: 2 in the accelerate "
                          "config (examples/accelerate/fsdp2.yaml)")


def enable_on_cpu(acc) -> None:
    """accelerate ignores an FSDP launch on a machine without a GPU (its CPU path is plain DDP); switch its FSDP2
    code path on for the gloo group, as it would be on GPUs. A no-op unless FSDP2 was asked for."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = acc.state
    if requested() != "fsdp2" or state.distributed_type == DistributedType.FSDP or acc.num_processes < 2:
        return
    from accelerate.state import PartialState

    plugin = FullyShardedDataParallelPlugin()  # read from the launcher's FSDP_* environment, like accelerate's
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    # accelerate copies the process state into every later AcceleratorState(); it records FSDP there too.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_sharded(acc) -> bool:
    """True when `prepare` shards models (FSDP2)."""
    return bool(getattr(acc, "is_fsdp2", False))


def _fsdp_modules(module: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def broadcast_from_main(acc, modules: list[nn.Module]) -> None:
    """Every parameter and buffer of `modules` set to the main process's values, in place. Collective.

    DDP does this when it wraps a model; FSDP2 does not: `fully_shard` keeps each process's own rows of each
    parameter. Weights loaded from a file are the same everywhere, but weights initialised at random after
    the per-process seeding differ (a new LoRA adapter's A matrices): sharded as they are, the model would
    be rank 0's rows of them next to rank 1's, a model no single process built."""
    import torch.distributed as dist

    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            if t.device == acc.device:
                dist.broadcast(t.data, src=0)
            else:  # not moved yet (prepare moves it): NCCL sends only GPU tensors, so one tensor at a time there
                on_device = t.data.to(acc.device)
                dist.broadcast(on_device, src=0)
                t.data.copy_(on_device)


class Joint(nn.Module):
    """Several trained modules as one (PPO's policy and critic): accelerate's FSDP2 shards one model per
    `prepare`. Its forward runs one named part, so every call passes the sharded root's hooks."""

    def __init__(self, parts: dict[str, nn.Module]):
        super().__init__()
        self.parts = nn.ModuleDict(parts)

    def forward(self, part: str, *args, **kwargs):
        out = self.parts[part](*args, **kwargs)
        # A view returned by the sharded root would lose its backward hook to an in-place op (torch warns of it);
        # the outputs here are per-token rows, small enough to copy.
        return tuple(_own(t) for t in out) if isinstance(out, tuple) else _own(out)


def _own(t):
    return t.clone() if torch.is_tensor(t) and t._base is not None else t


class PartView:
    """One part of a prepared `Joint`, used where the recipe used the part: calling it runs the joint's
    forward; every other attribute (`train`, `parameters`, `lm`, ...) is the part's own."""

    def __init__(self, joint: Joint, part: str):
        self.joint, self.part = joint, part

    def __call__(self, *args, **kwargs):
        return self.joint(self.part, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.joint.parts[self.part], name)

    def set_requires_gradient_sync(self, sync: bool) -> None:
        # accelerate's no_sync under FSDP2 calls this on the model it is given: the joint holds the gradients.
        self.joint.set_requires_gradient_sync(sync)


def prepare_joint(acc, modules: list[nn.Module], optimizer) -> tuple:
    """`prepare` for several trained modules and one optimizer under FSDP2: one sharded `Joint`, returned as
    a `PartView` per module, in order, then the optimizer."""
    joint, opt = acc.prepare(Joint({f"m{i}": m for i, m in enumerate(modules)}), optimizer)
    return (*(PartView(joint, f"m{i}") for i in range(len(modules))), opt)


def sharded_root(acc, module: nn.Module) -> nn.Module | None:
    """The prepared (fully_shard) module that holds `module` (itself or a submodule), or None."""
    if not is_sharded(acc):
        return None
    if isinstance(module, PartView):
        module = module.joint
    for root in acc._models:
        if any(m is module for m in root.modules()):
            return root
    return None


@contextmanager
def gathered(acc, module: nn.Module) -> Iterator[None]:
    """Inside the block every parameter of the prepared `module` is whole on every process, so any submodule can
    be called directly (the sampler's decode, an evaluation); the gathered copies are freed after it.
    A no-op without sharding. Collective: every process must enter it."""
    root = sharded_root(acc, module)
    if root is None or getattr(root, "_prefloop_gathered", False):  # not sharded, or gathered by an outer block
        yield
        return
    units = _fsdp_modules(root)
    # The root learns which blocks are its children on its first forward; a block called before that would take
    # itself for a root. Sampling can come before the first training forward (PPO's reward calibration).
    root._get_fsdp_state()._lazy_init()
    # Keep blocks gathered between forwards (one all-gather per block for the whole rollout, not per token).
    root.set_reshard_after_forward(False)
    root._prefloop_gathered = True
    try:
        for m in units:
            m.unshard()
        yield
    finally:
        root._prefloop_gathered = False
        for m in units:
            m.reshard()
        # Back to accelerate's setting for the blocks; the root never reshards after forward in training.
        root.set_reshard_after_forward(bool(acc.state.fsdp_plugin.reshard_after_forward))
        root.set_reshard_after_forward(False, recurse=False)


def place_frozen(acc, module: nn.Module) -> nn.Module:
    """A frozen model (reference policy, reward model) on the accelerator's device; under FSDP2 sharded as the
    trained model is (each transformer block, then the whole), so each process holds 1/N of it and its forward
    gathers one block at a time. It must then be called through its own forward, by every process the same
    number of times (the recipes split every batch evenly over the processes)."""
    module.to(acc.device)
    if not is_sharded(acc) or any(p.requires_grad for p in module.parameters()):  # trained: `prepare` shards it
        return module
    from torch.distributed.fsdp import fully_shard

    blocks = {n for m in module.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    for m in module.modules():
        if type(m).__name__ in blocks:
            fully_shard(m)
    fully_shard(module)
    return module


def _prefix(root: nn.Module, module: nn.Module) -> str:
    for name, m in root.named_modules():
        if m is module:
            return name + "." if name else ""
    raise ValueError("module is not inside the prepared model")


def full_state_dict(acc, module: nn.Module) -> dict | None:
    """The whole state dict of `module` (a prepared model or one of its submodules), on the CPU of the main
    process; None on the others, and None when `module` is not sharded (save it as it is). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    root = sharded_root(acc, module)
    if root is None:
        return None
    full = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not acc.is_main_process:
        return None
    prefix = _prefix(root, module)
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


def _root_of_optimizer(acc, opt) -> nn.Module:
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    roots = [m for m in acc._models if any(id(p) in params for p in m.parameters())]
    if len(roots) != 1:
        raise ValueError("a sharded optimizer must belong to exactly one prepared model")
    return roots[0]


def full_optimizer_state(acc, opt) -> dict:
    """The optimizer's whole state (keyed by parameter name, so any sharding can load it back); collective.
    Without sharding: `opt.state_dict()`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    inner = getattr(opt, "optimizer", opt)
    if not is_sharded(acc):
        return opt.state_dict()
    return get_optimizer_state_dict(_root_of_optimizer(acc, inner), inner,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(acc, opt, state: dict) -> None:
    """Restore what `full_optimizer_state` saved into the optimizer of a prepared (sharded) model: each process
    keeps its shard of every state tensor."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    inner = getattr(opt, "optimizer", opt)
    set_optimizer_state_dict(_root_of_optimizer(acc, inner), inner, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def cast_state_dict(state: dict, dtype: torch.dtype) -> dict:
    """Floating-point tensors of a state dict in `dtype` (the saved model's dtype), the others as they are."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
