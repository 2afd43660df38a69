"""Precision: fp32 master weights whatever the checkpoint's dtype, and the saved dtype the user's."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from prefloop.errors import ConfigError, PrecisionError
from prefloop.models import load_causal_lm, load_reward_model
from prefloop.models.precision import cast_for_saving, checkpoint_dtype, resolve_save_dtype
from prefloop.recipes.common import CommonConfig, make_optimizer
from prefloop.runtime.accel import frozen_dtype, resolve_precision


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory, policy_dir):
    """The micro Llama saved in bf16, as Qwen and Llama checkpoints are published."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("bf16")
    AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.bfloat16).save_pretrained(d)
    AutoTokenizer.from_pretrained(policy_dir).save_pretrained(d)
    return d


def saved_tensor_dtypes(model_dir) -> set[torch.dtype]:
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}


def test_bf16_checkpoint_loads_as_fp32_masters_and_keeps_small_updates(bf16_dir):
    assert checkpoint_dtype(str(bf16_dir)) == torch.bfloat16
    model = load_causal_lm(str(bf16_dir))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    before = [p.detach().clone() for p in model.parameters()]
    opt = make_optimizer(model.parameters(), CommonConfig(lr=1e-5))
    model(input_ids=torch.tensor([[3, 4, 5, 6]]), labels=torch.tensor([[3, 4, 5, 6]])).loss.backward()
    opt.step()
    state_dtypes = {t.dtype for s in opt.state.values() for k, t in s.items() if k != "step"}
    assert state_dtypes == {torch.float32}
    # Adam's first step moves every weight with a gradient by ~lr = 1e-5, far below a bf16 ulp at the
    # weights' scale (~0.02 * 2^-8 = 8e-5): in bf16 nearly all of these updates would round away.
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
    total = sum(b.numel() for b in before)
    assert changed / total > 0.5


def test_reward_model_from_bf16_checkpoint_is_fp32(bf16_dir):
    rm = load_reward_model(str(bf16_dir), new_head=True)
    assert {p.dtype for p in rm.parameters()} == {torch.float32}


def test_sft_on_bf16_checkpoint_saves_bf16_by_default_and_fp32_on_request(tmp_path, bf16_dir, toy_data):
    from prefloop.recipes.sft import SFTConfig, run_sft

    common = dict(model=str(bf16_dir), data=toy_data["demos"], max_steps=3, lr=1e-5, batch_size=8,
                  max_length=48, warmup_ratio=0.0, schedule="constant", precision="fp32")
    meta = run_sft(SFTConfig(out=tmp_path / "auto", **common))
    assert meta["precision"] == {"compute": "fp32", "master_weights": "float32", "source_dtype": "bfloat16",
                                 "saved_dtype": "bfloat16"}
    assert saved_tensor_dtypes(tmp_path / "auto" / "model") == {torch.bfloat16}
    assert json.loads((tmp_path / "auto" / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "auto" / "prefloop.json").read_text())["precision"]["saved_dtype"] == "bfloat16"

    meta = run_sft(SFTConfig(out=tmp_path / "fp32", dtype="fp32", **common))
    assert meta["precision"]["saved_dtype"] == "float32"
    out = tmp_path / "fp32" / "model"
    assert saved_tensor_dtypes(out) == {torch.float32}
    # Trained on fp32 masters: 3 steps at lr 1e-5 move most weights (pure bf16 training moved ~13%).
    start, end = load_causal_lm(str(bf16_dir)), load_causal_lm(str(out))
    changed = sum(int((a != b).sum()) for a, b in zip(start.parameters(), end.parameters()))
    assert changed / sum(p.numel() for p in start.parameters()) > 0.5


def test_cast_for_saving_restores_the_fp32_masters():
    lin = torch.nn.Linear(4, 4)
    lin.weight.data.fill_(1.0 + 2**-20)  # not representable in bf16
    with cast_for_saving(lin, "bfloat16"):
        assert lin.weight.dtype == torch.bfloat16 and float(lin.weight.data[0, 0]) == 1.0
    assert lin.weight.dtype == torch.float32 and float(lin.weight.data[0, 0]) == 1.0 + 2**-20


def test_save_dtype_choices():
    assert resolve_save_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert resolve_save_dtype("auto", None) == torch.float32
    assert resolve_save_dtype("fp16", torch.float32) == torch.float16
    with pytest.raises(ValueError, match="--dtype must be one of"):
        resolve_save_dtype("int8", None)


def test_precision_modes():
    assert resolve_precision("fp32") == "no"
    assert resolve_precision("bf16") == "bf16"
    assert frozen_dtype("bf16") == torch.bfloat16 and frozen_dtype("fp32") == torch.float32
    with pytest.raises(PrecisionError, match="--precision must be one of"):
        resolve_precision("fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_fp16_without_cuda_is_a_config_error(tmp_path, policy_dir, toy_data):
    from prefloop.recipes.sft import SFTConfig, run_sft

    with pytest.raises(ConfigError, match="--precision fp16 needs a CUDA GPU"):
        run_sft(SFTConfig(model=str(policy_dir), data=toy_data["demos"], out=tmp_path / "o", precision="fp16"))
    assert not (tmp_path / "o").exists()


def test_bf16_autocast_keeps_fp32_masters(tmp_path, bf16_dir, toy_data):
    """--precision bf16 computes in bf16 (autocast) but trains and saves (with --dtype fp32) fp32 weights."""
    from prefloop.recipes.sft import SFTConfig, run_sft

    meta = run_sft(SFTConfig(model=str(bf16_dir), data=toy_data["demos"], out=tmp_path / "o", max_steps=2,
                             lr=1e-5, batch_size=8, max_length=48, precision="bf16", dtype="fp32"))
    assert meta["precision"]["compute"] == "bf16"
    assert saved_tensor_dtypes(tmp_path / "o" / "model") == {torch.float32}
