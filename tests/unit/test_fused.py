"""Faster kernels for the same computation: fused tanh-GELU in loaded models, fused AdamW."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from transformers.activations import NewGELUActivation

from prefloop.models import gpt2_config, load_causal_lm, load_reward_model
from prefloop.models.fused import TanhGELU, fuse_activations


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(gpt2_config(64, "micro"))  # activation_function: gelu_new
    d = tmp_path_factory.mktemp("gpt2")
    m.save_pretrained(d)
    return d


def _kinds(model) -> set[type]:
    return {type(m) for m in model.modules()}


def _ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (3, 12), generator=g)


def test_loaded_lm_runs_the_fused_gelu_and_computes_the_same_loss_and_gradients(gpt2_dir):
    plain = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    ours = load_causal_lm(str(gpt2_dir))
    assert NewGELUActivation in _kinds(plain)
    assert NewGELUActivation not in _kinds(ours) and TanhGELU in _kinds(ours)
    assert ours.config.activation_function == "gelu_new"  # the saved config says what the model is
    ids = _ids()
    losses, grads = [], []
    for m in (plain, ours):
        m.train()
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_loaded_reward_model_runs_the_fused_gelu_and_scores_the_same(gpt2_dir):
    plain = AutoModelForSequenceClassification.from_pretrained(gpt2_dir, num_labels=1, pad_token_id=0)
    ours = load_reward_model(str(gpt2_dir))
    ours.score.load_state_dict(plain.score.state_dict())
    ours.config.pad_token_id = 0
    assert NewGELUActivation not in _kinds(ours) and TanhGELU in _kinds(ours)
    ids = _ids().clamp(min=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-6)


def test_fuse_activations_leaves_other_activations_alone():
    model = torch.nn.Sequential(torch.nn.GELU(), NewGELUActivation(), torch.nn.Sequential(NewGELUActivation()))
    assert fuse_activations(model) == 2
    assert [type(m) for m in model.modules()][1:] == [torch.nn.GELU, TanhGELU, torch.nn.Sequential, TanhGELU]
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(model[1](x), NewGELUActivation()(x), rtol=0, atol=1e-6)


def test_optimizer_is_fused_adamw_and_steps_like_the_per_tensor_loop():
    from prefloop.recipes.common import CommonConfig, make_optimizer

    torch.manual_seed(0)
    cfg = CommonConfig(lr=1e-2, weight_decay=0.1, adam_eps=1e-6)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    fused = make_optimizer(a.parameters(), cfg)
    loop = torch.optim.AdamW(b.parameters(), lr=1e-2, eps=1e-6, weight_decay=0.1, betas=(0.9, 0.95), foreach=False)
    assert fused.defaults["fused"] is True
    x = torch.randn(5, 8)
    for _ in range(3):
        for m, opt in ((a, fused), (b, loop)):
            m(x).square().sum().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not torch.equal(a.weight, torch.nn.Linear(8, 4).weight)
