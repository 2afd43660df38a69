"""The architecture, dropout and precision checks on a CUDA GPU (`pytest -m cuda`; skipped without one).

Set PREFLOOP_CUDA_REPORT=FILE to append what each test measured (one JSON line per test) for
benchmarks/README.md.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from prefloop.models import ARCHITECTURES, CausalLMLoss, ResponseForward, disable_dropout

from .test_architectures import build, reference_logprobs, right_padded_batch

pytestmark = pytest.mark.cuda
DEVICE = "cuda"


def report(test: str, **values) -> None:
    path = os.environ.get("PREFLOOP_CUDA_REPORT")
    if path:
        row = {"test": test, "device": torch.cuda.get_device_name(0), "torch": torch.__version__, **values}
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def training_logprobs_gap(model, ids, mask, labels) -> tuple[float, float]:
    """Max |training log-prob - model's own log-prob| over SFT targets and over a 5-token response."""
    ref = reference_logprobs(model, ids, mask)
    keep = labels[:, 1:] != -100
    with torch.no_grad():
        loss_sum = CausalLMLoss(model)(ids, mask, labels)
        lp = ResponseForward(model)(ids, mask, ids[:, -5:])[0].double()
    sft_gap = abs(float(loss_sum) + float(ref[keep].sum())) / int(keep.sum())
    real = mask[:, -5:].bool()
    return sft_gap, float((lp[real] - ref[:, -5:][real]).abs().max())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_identity_fp32_on_cuda(arch):
    model = build(arch).to(DEVICE).eval()
    ids, mask, labels = (t.to(DEVICE) for t in right_padded_batch())
    sft_gap, resp_gap = training_logprobs_gap(model, ids, mask, labels)
    report("logits_identity_fp32", arch=arch, sft_gap=sft_gap, response_gap=resp_gap)
    # fp32 on a GPU: the head over a subset of rows may run another GEMM kernel than over all of them
    # (different split-K), so allow fp32 rounding of logits of size ~1, far below the 0.2-0.4 nats of a
    # skipped post-processing.
    assert sft_gap < 1e-4 and resp_gap < 1e-4


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_identity_bf16_autocast_on_cuda(arch):
    """fp32 master weights under bf16 autocast, as training runs on a GPU."""
    model = build(arch).to(DEVICE).eval()
    ids, mask, labels = (t.to(DEVICE) for t in right_padded_batch())
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        sft_gap, resp_gap = training_logprobs_gap(model, ids, mask, labels)
    report("logits_identity_bf16_autocast", arch=arch, sft_gap=sft_gap, response_gap=resp_gap)
    # bf16 keeps 8 significant bits: each logit is rounded by up to 2^-9 relative (~0.004 at |z| ~ 2), and
    # GEMMs over a different number of rows may round differently, so log-probs may differ by a few 1e-3;
    # 2e-2 still separates this from a skipped soft-cap, scale or division (0.2-0.4 nats measured).
    assert sft_gap < 2e-2 and resp_gap < 2e-2


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_identity_pure_bf16_on_cuda(arch):
    """A frozen model kept in bf16 (reference, reward model under --precision bf16)."""
    model = build(arch).to(DEVICE, torch.bfloat16).eval()
    ids, mask, labels = (t.to(DEVICE) for t in right_padded_batch())
    sft_gap, resp_gap = training_logprobs_gap(model, ids, mask, labels)
    report("logits_identity_pure_bf16", arch=arch, sft_gap=sft_gap, response_gap=resp_gap)
    assert sft_gap < 2e-2 and resp_gap < 2e-2  # (bf16 rounding, as above)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dropout_off_on_cuda(arch):
    model = build(arch, dropout=0.5).to(DEVICE).train()
    ids, mask, _ = (t.to(DEVICE) for t in right_padded_batch())
    disable_dropout(model)
    a = model(input_ids=ids, attention_mask=mask).logits
    b = model(input_ids=ids, attention_mask=mask).logits
    report("dropout_off", arch=arch, max_diff=float((a - b).abs().max()))
    # Dropout at 0.5 changes logits by O(1); the tolerance only admits non-deterministic kernel rounding.
    assert float((a - b).abs().max()) < 1e-5


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory, policy_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("bf16cuda")
    AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.bfloat16).save_pretrained(d)
    AutoTokenizer.from_pretrained(policy_dir).save_pretrained(d)
    return d


def test_bf16_checkpoint_sft_on_cuda_keeps_fp32_masters(tmp_path, bf16_dir, toy_data):
    from prefloop.models import load_causal_lm
    from prefloop.recipes.sft import SFTConfig, run_sft

    from .test_precision import saved_tensor_dtypes

    common = dict(model=str(bf16_dir), data=toy_data["demos"], max_steps=3, lr=1e-5, batch_size=8,
                  max_length=48, warmup_ratio=0.0, schedule="constant", precision="bf16")
    meta = run_sft(SFTConfig(out=tmp_path / "fp32", dtype="fp32", **common))
    assert meta["precision"]["compute"] == "bf16"
    assert saved_tensor_dtypes(tmp_path / "fp32" / "model") == {torch.float32}
    start, end = load_causal_lm(str(bf16_dir)), load_causal_lm(str(tmp_path / "fp32" / "model"))
    changed = sum(int((a != b).sum()) for a, b in zip(start.parameters(), end.parameters()))
    frac = changed / sum(p.numel() for p in start.parameters())
    meta = run_sft(SFTConfig(out=tmp_path / "auto", **common))
    assert saved_tensor_dtypes(tmp_path / "auto" / "model") == {torch.bfloat16}
    report("bf16_sft", changed_fraction=frac, loss=meta["metrics"]["loss/sft"])
    assert frac > 0.5


def test_bf16_dpo_and_grpo_on_cuda(tmp_path, bf16_dir, toy_data, reward_dir):
    from prefloop.recipes.dpo import DPOConfig, run_dpo
    from prefloop.recipes.grpo import GRPOConfig, run_grpo
    from prefloop.runtime import read_metrics

    run_dpo(DPOConfig(model=str(bf16_dir), data=toy_data["pairs"], out=tmp_path / "dpo", max_steps=3, batch_size=8,
                      max_length=48, lr=1e-4, eval_fraction=0.1, precision="bf16"))
    dpo = read_metrics(tmp_path / "dpo" / "metrics.jsonl")
    run_grpo(GRPOConfig(policy=str(bf16_dir), reward=str(reward_dir), prompts=toy_data["prompts"],
                        out=tmp_path / "grpo", max_steps=2, num_generations=4, rollout_batch_size=16,
                        batch_size=16, max_new_tokens=8, max_length=48, precision="bf16"))
    grpo = read_metrics(tmp_path / "grpo" / "metrics.jsonl")
    report("bf16_dpo_grpo", dpo_loss_step1=dpo[0]["loss/dpo"], grpo_logprob_gap=grpo[0]["rollout/logprob_gap"],
           grpo_kl_step1=grpo[0]["kl/k1"])
    # Policy (fp32 masters under autocast) and reference (bf16 weights) agree up to bf16 rounding at step 1.
    assert dpo[0]["loss/dpo"] == pytest.approx(math.log(2), abs=5e-2)
    train = [r for r in dpo if "loss/dpo" in r]  # the held-out evaluation writes a row of its own
    assert len(train) == 3 and all(math.isfinite(r["loss/dpo"]) for r in train)
    assert grpo[0]["rollout/logprob_gap"] < 5e-2
