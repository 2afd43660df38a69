"""LoRA adapters and the memory switches on micro models: what trains, the reference with the adapter
disabled, merging, saving and loading, gradient checkpointing, the attention kernel, option checks."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("peft")

from prefloop.models import CausalLMLoss, load_causal_lm, load_reward_model, load_tokenizer  # noqa: E402
from prefloop.models.heads import sequence_scores  # noqa: E402
from prefloop.models.lora import (  # noqa: E402
    WithoutAdapter,
    adapter_disabled,
    enable_gradient_checkpointing,
    is_adapter_dir,
    merged,
    parameter_counts,
    peft_model,
    prepare_for_training,
)
from prefloop.models.wrappers import ResponseForward  # noqa: E402
from prefloop.rl import ppo_policy_loss  # noqa: E402


def opts(**kw):
    base = dict(lora_r=4, lora_alpha=8.0, lora_dropout=0.0, lora_target_modules=None, gradient_checkpointing=False)
    return SimpleNamespace(**{**base, **kw})


def batch(tok, n=4, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(tok), (n, T), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    ids = ids.masked_fill(mask == 0, tok.pad_token_id)
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def train_steps(model, tok, steps=3, lr=5e-2):
    loss_fn = CausalLMLoss(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    ids, mask, labels = batch(tok)
    for _ in range(steps):
        loss_fn(ids, mask, labels).backward()
        opt.step()
        opt.zero_grad()
    return model


def base_weights(model) -> dict[str, torch.Tensor]:
    """Every weight of the model outside the adapter, under its plain-model name."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        out[name.replace(".base_layer", "").replace(".original_module", "")] = p.detach().clone()
    return out


@pytest.fixture()
def tok(policy_dir):
    return load_tokenizer(str(policy_dir))


def test_lora_trains_only_the_adapter(policy_dir, tok):
    original = dict(load_causal_lm(str(policy_dir), tok).named_parameters())
    model = train_steps(prepare_for_training(load_causal_lm(str(policy_dir), tok), opts()), tok)
    after = base_weights(model)
    assert after.keys() == original.keys()
    for name, w in after.items():
        assert torch.equal(w, original[name]), name  # bitwise: the base weights never moved
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: these were trained
    # every projection of attention and MLP is adapted by default, the LM head is not
    adapted = {n.split(".")[-2] for n, _ in model.named_modules() if n.endswith("lora_A")}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= adapted
    assert "lm_head" not in adapted


def test_reward_lora_trains_adapter_and_score_head(reward_dir, tok):
    original = {n: p.detach().clone() for n, p in load_reward_model(str(reward_dir), tok).named_parameters()}
    rm = prepare_for_training(load_reward_model(str(reward_dir), tok), opts(), reward=True)
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert any("score.modules_to_save" in n for n in trainable)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=5e-2)
    ids, mask, _ = batch(tok)
    for _ in range(2):
        (-sequence_scores(rm, ids, mask).mean()).backward()
        opt.step()
        opt.zero_grad()
    for name, w in base_weights(rm).items():
        assert torch.equal(w, original[name]), name
    head = dict(rm.named_parameters())["score.modules_to_save.default.weight"]
    assert not torch.equal(head, original["score.weight"])


def test_adapter_disabled_reproduces_the_base_model_exactly(policy_dir, tok):
    base = load_causal_lm(str(policy_dir), tok)
    model = train_steps(prepare_for_training(load_causal_lm(str(policy_dir), tok), opts()), tok)
    ids, mask, _ = batch(tok, seed=1)
    R = 5
    with torch.no_grad():
        ref = ResponseForward(base)(ids, mask, ids[:, -R:], 0.7)[0]
        trained = ResponseForward(model)(ids, mask, ids[:, -R:], 0.7)[0]
        with adapter_disabled(model):
            disabled = ResponseForward(model)(ids, mask, ids[:, -R:], 0.7)[0]
        wrapped = WithoutAdapter(ResponseForward(model))(ids, mask, ids[:, -R:], 0.7)[0]
        again = ResponseForward(model)(ids, mask, ids[:, -R:], 0.7)[0]
    assert not torch.equal(trained, ref)  # the adapter changed the policy...
    assert torch.equal(disabled, ref) and torch.equal(wrapped, ref)  # ...and disabling it gives the base exactly
    assert torch.equal(again, trained)  # and it is back on after the block


def test_reference_forward_has_no_gradient(policy_dir, tok):
    model = prepare_for_training(load_causal_lm(str(policy_dir), tok), opts())
    ids, mask, _ = batch(tok)
    logp, _, _ = WithoutAdapter(ResponseForward(model))(ids, mask, ids[:, -4:])
    assert not logp.requires_grad


def test_merged_model_loads_in_plain_transformers_with_the_same_logits(policy_dir, tok, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    model = train_steps(prepare_for_training(load_causal_lm(str(policy_dir), tok), opts()), tok)
    ids, mask, _ = batch(tok, seed=2)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path / "adapter")
    assert is_adapter_dir(tmp_path / "adapter") and not (tmp_path / "adapter" / "model.safetensors").exists()
    with torch.no_grad():
        by_peft = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"))(
            input_ids=ids, attention_mask=mask).logits
        by_prefloop = load_causal_lm(str(tmp_path / "adapter"), tok)(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(by_peft, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_prefloop, expected, atol=1e-5, rtol=1e-5)

    plain = merged(model)
    assert peft_model(plain) is None and not any("lora_" in n for n, _ in plain.named_parameters())
    plain.save_pretrained(tmp_path / "merged")
    assert not is_adapter_dir(tmp_path / "merged")
    with torch.no_grad():
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))(
            input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(reloaded, expected, atol=1e-5, rtol=1e-5)


def test_trainable_parameter_count(policy_dir, tok):
    model = prepare_for_training(load_causal_lm(str(policy_dir), tok), opts(lora_r=2))
    counts = parameter_counts(model)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert counts["params/trainable"] == lora
    base_total = sum(p.numel() for p in load_causal_lm(str(policy_dir), tok).parameters())
    assert counts["params/total"] == base_total + lora


def test_an_earlier_stages_adapter_is_merged_before_a_new_one(policy_dir, tok, tmp_path):
    model = train_steps(prepare_for_training(load_causal_lm(str(policy_dir), tok), opts()), tok)
    model.save_pretrained(tmp_path / "sft")
    loaded = load_causal_lm(str(tmp_path / "sft"), tok)
    full = prepare_for_training(loaded, opts(lora_r=0))  # full fine-tuning of the merged model
    assert peft_model(full) is None and all(p.requires_grad for p in full.parameters())
    resumed = prepare_for_training(load_causal_lm(str(tmp_path / "sft"), tok), opts(), resumed=True)
    trainable = [n for n, p in resumed.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # a resumed run continues its own adapter


def _grads(model, loss_fn):
    loss = loss_fn(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.detach(), grads


def _count_layer_forwards(model):
    # The first module inside the first block: a checkpointed block's hooks stay outside the checkpoint,
    # its submodules' run again when the backward pass recomputes it.
    calls = []
    handle = model.model.layers[0].input_layernorm.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients_sft(policy_dir, tok, lora):
    ids, mask, labels = batch(tok)
    results = []
    for gc in (False, True):
        torch.manual_seed(0)  # the same adapter initialisation in both runs
        model = load_causal_lm(str(policy_dir), tok)
        model = prepare_for_training(model, opts(lora_r=4 if lora else 0, gradient_checkpointing=gc))
        model.train()
        calls, handle = _count_layer_forwards(model)
        results.append(_grads(model, lambda m: CausalLMLoss(m)(ids, mask, labels)))
        handle.remove()
        # checkpointing really ran: the block is run again during the backward pass
        assert len(calls) == (2 if gc else 1)
    (loss0, g0), (loss1, g1) = results
    assert torch.equal(loss0, loss1)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-7, rtol=1e-6, msg=n)


def test_gradient_checkpointing_gives_the_same_policy_gradient(policy_dir, tok):
    ids, mask, _ = batch(tok)
    R = 6
    g = torch.Generator().manual_seed(3)
    advantages, old_noise = torch.randn(ids.shape[0], R, generator=g), 0.1 * torch.randn(ids.shape[0], R, generator=g)

    def loss_fn(m):
        logp = ResponseForward(m)(ids, mask, ids[:, -R:], 0.7)[0]
        loss, _ = ppo_policy_loss(logp, logp.detach() + old_noise, advantages, torch.ones_like(logp), 0.2)
        return loss

    results = []
    for gc in (False, True):
        model = load_causal_lm(str(policy_dir), tok)
        if gc:
            enable_gradient_checkpointing(model)
        model.train()
        calls, handle = _count_layer_forwards(model)
        results.append(_grads(model, loss_fn))
        handle.remove()
        assert len(calls) == (2 if gc else 1)
    (loss0, g0), (loss1, g1) = results
    assert torch.equal(loss0, loss1)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-7, rtol=1e-6, msg=n)


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_model(policy_dir, tok, kernel):
    model = load_causal_lm(str(policy_dir), tok, attn_implementation=kernel)
    assert model.config._attn_implementation == kernel
    rm = load_reward_model(str(policy_dir), tok, attn_implementation=kernel)
    assert rm.config._attn_implementation == kernel


def test_lora_options_without_peft_are_refused_naming_the_extra(monkeypatch):
    from prefloop.errors import ConfigError
    from prefloop.recipes.memory import check_memory_options
    from prefloop.recipes.sft import SFTConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ConfigError, match=r"--lora-r needs peft: pip install 'prefloop\[lora\]'"):
        check_memory_options(SFTConfig(lora_r=8))
    check_memory_options(SFTConfig())  # no LoRA option: no peft needed


def test_lora_option_checks():
    from prefloop.errors import ConfigError
    from prefloop.recipes.memory import check_memory_options
    from prefloop.recipes.sft import SFTConfig

    with pytest.raises(ConfigError, match="--merge-lora and --lora-target-modules need --lora-r"):
        check_memory_options(SFTConfig(merge_lora=True))
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ConfigError, match="flash_attention_2 needs the flash-attn package"):
            check_memory_options(SFTConfig(attn_implementation="flash_attention_2"))


def test_cli_lora_option_without_peft_exits_2(monkeypatch, tmp_path, capsys):
    from prefloop.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    code = main(["dpo", "--model", "m", "--data", "d.jsonl", "--out", str(tmp_path / "x"), "--lora-r", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: --lora-r needs peft: pip install 'prefloop[lora]'"]
    assert not (tmp_path / "x").exists()


def test_an_adapter_trained_on_an_earlier_adapter_reloads_to_the_same_model(policy_dir, tok, tmp_path):
    """SFT with LoRA, then another LoRA stage from its OUT/model: the second adapter was trained on the base
    with the first merged, so it names the first as its base, and the loader rebuilds that chain."""
    first = train_steps(prepare_for_training(load_causal_lm(str(policy_dir), tok), opts()), tok)
    first.save_pretrained(tmp_path / "first")
    second = train_steps(prepare_for_training(load_causal_lm(str(tmp_path / "first"), tok), opts()), tok)
    second.save_pretrained(tmp_path / "second")
    config = json.loads((tmp_path / "second" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "first")
    ids, mask, _ = batch(tok, seed=5)
    with torch.no_grad():
        expected = second(input_ids=ids, attention_mask=mask).logits
        reloaded = load_causal_lm(str(tmp_path / "second"), tok)(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(reloaded, expected, atol=1e-5, rtol=1e-5)


# -- the frozen base in bf16 under a bf16 computation -------------------------------------------------------


def _dtypes(model) -> dict[str, set]:
    """The dtypes of the adapter, the trained score head, and the frozen base."""
    out = {"adapter": set(), "head": set(), "base": set()}
    for name, p in model.named_parameters():
        kind = "adapter" if "lora_" in name else "head" if "modules_to_save" in name else "base"
        out[kind].add(p.dtype)
    return out


def test_bf16_keeps_the_frozen_base_in_bf16_and_the_trained_weights_fp32(policy_dir, reward_dir, tok):
    lm = prepare_for_training(load_causal_lm(str(policy_dir), tok), opts(precision="bf16"))
    assert _dtypes(lm) == {"adapter": {torch.float32}, "head": set(), "base": {torch.bfloat16}}
    assert all(p.requires_grad == (p.dtype == torch.float32) for p in lm.parameters())
    if lm.config.tie_word_embeddings:  # the cast keeps tied weights one tensor
        assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    rm = prepare_for_training(load_reward_model(str(reward_dir), tok), opts(precision="bf16"), reward=True)
    assert _dtypes(rm) == {"adapter": {torch.float32}, "head": {torch.float32}, "base": {torch.bfloat16}}
    for precision in ("fp32", "auto"):  # auto is fp32 on a CPU: nothing changes
        same = prepare_for_training(load_causal_lm(str(policy_dir), tok), opts(precision=precision))
        assert {p.dtype for p in same.parameters()} == {torch.float32}


def _bf16_steps(model, tok, steps=3, lr=5e-2):
    loss_fn, losses = CausalLMLoss(model), []
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    ids, mask, labels = batch(tok)
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(ids, mask, labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return model, losses


def test_bf16_base_trains_like_the_fp32_base_and_disabling_the_adapter_gives_the_bf16_reference(policy_dir, tok):
    torch.manual_seed(0)
    model, losses = _bf16_steps(prepare_for_training(load_causal_lm(str(policy_dir), tok), opts(precision="bf16")),
                                tok)
    torch.manual_seed(0)  # the same adapter initialisation, on the fp32 base
    _, fp32_losses = _bf16_steps(prepare_for_training(load_causal_lm(str(policy_dir), tok), opts()), tok)
    assert losses[-1] < losses[0]
    # under autocast the matmuls read bf16 weights either way; norms and embeddings differ by bf16 rounding
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(fp32_losses), atol=0.0, rtol=2e-2)
    assert _dtypes(model)["adapter"] == {torch.float32}  # AdamW updated fp32 masters

    reference = load_causal_lm(str(policy_dir), tok, dtype=torch.bfloat16)  # what frozen_dtype loads
    ids, mask, _ = batch(tok, seed=1)
    R = 5
    for amp in (False, True):  # scoring a rollout runs outside autocast, the training forward inside
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            ref = ResponseForward(reference)(ids, mask, ids[:, -R:], 0.7)[0]
            disabled = WithoutAdapter(ResponseForward(model))(ids, mask, ids[:, -R:], 0.7)[0]
            trained = ResponseForward(model)(ids, mask, ids[:, -R:], 0.7)[0]
        assert torch.equal(disabled, ref), amp
        assert not torch.equal(trained, ref)


def test_bf16_base_samples_and_scores_outside_autocast(policy_dir, reward_dir, tok):
    """The sampler, a value head and a LoRA critic's fp32 score head all read the bf16 trunk without autocast."""
    from prefloop.models.heads import ValueHead
    from prefloop.models.wrappers import CriticForward
    from prefloop.rollout.sampler import SamplingConfig, sample

    lm = prepare_for_training(load_causal_lm(str(policy_dir), tok), opts(precision="bf16"))
    ids, mask, _ = batch(tok, n=2, T=6)
    cfg = SamplingConfig(max_new_tokens=4, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = sample(lm.eval(), ids, mask, cfg, generator=torch.Generator().manual_seed(0))
    assert out.response_ids.shape == (2, 4)
    with torch.no_grad():
        values = ResponseForward(lm, ValueHead(lm.config.hidden_size))(ids, mask, ids[:, -3:])[2]
    assert values.dtype == torch.float32 and values.shape == (2, 3)
    critic = prepare_for_training(load_reward_model(str(reward_dir), tok), opts(precision="bf16"), reward=True)
    with torch.no_grad():
        v = CriticForward(critic)(ids, mask, 3)
        with adapter_disabled(critic):  # the frozen copy of the head is bf16, like the trunk
            v0 = CriticForward(critic)(ids, mask, 3)
    # the head has not trained yet: its fp32 copy and the frozen bf16 original differ by bf16 rounding only
    assert v.shape == (2, 3) and torch.isfinite(v).all()
    torch.testing.assert_close(v, v0, atol=2e-2, rtol=1e-2)


def test_bf16_base_gradient_checkpointing_gives_the_same_gradients(policy_dir, tok):
    ids, mask, labels = batch(tok)
    results = []
    for gc in (False, True):
        torch.manual_seed(0)
        model = prepare_for_training(load_causal_lm(str(policy_dir), tok), opts(precision="bf16",
                                                                                 gradient_checkpointing=gc))
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(_grads(model, lambda m: CausalLMLoss(m)(ids, mask, labels)))
    (loss0, g0), (loss1, g1) = results
    assert torch.equal(loss0, loss1) and g0.keys() == g1.keys() and g0
    assert all(g.dtype == torch.float32 for g in g0.values())  # gradients of the fp32 adapter only
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5, msg=n)


def test_bf16_base_merges_in_fp32_and_loads_in_plain_transformers(policy_dir, tok, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model, _ = _bf16_steps(prepare_for_training(load_causal_lm(str(policy_dir), tok), opts(precision="bf16")), tok)
    layer = model.model.layers[0].self_attn.q_proj
    base = layer.base_layer.weight.detach().float().clone()
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach() * layer.scaling["default"]
    plain = merged(model)
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    # the update added at fp32: rounded into the bf16 weights, most of it would be lost
    torch.testing.assert_close(plain.model.layers[0].self_attn.q_proj.weight, base + delta, atol=1e-7, rtol=1e-6)
    ids, mask, _ = batch(tok, seed=2)
    with torch.no_grad():
        expected = plain(input_ids=ids, attention_mask=mask).logits
    plain.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))(
            input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(reloaded, expected, atol=1e-6, rtol=1e-6)


IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def _run_capturing(monkeypatch, run, cfg) -> list:
    """Run a recipe; return the dtypes and logits on IDS of the model it handed to `for_saving` (the trained
    model, before a merge)."""
    from prefloop.models import lora as lora_module

    seen, real = [], lora_module.for_saving

    def capture(model, merge):
        with torch.no_grad():
            seen.append((_dtypes(model), model(input_ids=IDS).logits.float()))
        return real(model, merge)

    monkeypatch.setattr(lora_module, "for_saving", capture)
    run(cfg)
    return seen


def test_sft_under_bf16_trains_an_fp32_adapter_on_a_bf16_base_and_merges(policy_dir, toy_data, tmp_path,
                                                                         monkeypatch):
    from transformers import AutoModelForCausalLM

    from prefloop.recipes.sft import SFTConfig, run_sft

    cfg = SFTConfig(model=str(policy_dir), data=toy_data["demos"], out=tmp_path / "sft", max_steps=2, batch_size=2,
                    max_length=32, lr=1e-2, lora_r=4, precision="bf16", merge_lora=True, seed=0)
    [(dtypes, logits)] = _run_capturing(monkeypatch, run_sft, cfg)
    assert dtypes == {"adapter": {torch.float32}, "head": set(), "base": {torch.bfloat16}}
    merged_dir = tmp_path / "sft" / "model"
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "float32"  # --dtype auto: the source's
    plain = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    with torch.no_grad():
        by_plain = plain(input_ids=IDS).logits
    # the trained model computed in bf16, the merged one in fp32 on the same (bf16-valued) base weights
    torch.testing.assert_close(by_plain, logits, atol=3e-2, rtol=3e-2)


def test_ppo_under_bf16_keeps_policy_and_critic_bases_in_bf16(policy_dir, reward_dir, toy_data, tmp_path,
                                                             monkeypatch):
    from prefloop.recipes import ppo

    critics, real_save = [], ppo.save_critic
    monkeypatch.setattr(ppo, "save_critic", lambda ctx, pf, cf: (
        critics.append(_dtypes(ctx.acc.unwrap_model(cf).critic)), real_save(ctx, pf, cf)))
    cfg = ppo.PPOConfig(policy=str(policy_dir), reward=str(reward_dir), prompts=toy_data["prompts"],
                        out=tmp_path / "ppo", max_steps=2, rollout_batch_size=4, batch_size=4, max_new_tokens=4,
                        max_length=32, lr=1e-2, lora_r=4, precision="bf16", seed=0)
    [(policy, _)] = _run_capturing(monkeypatch, ppo.run_ppo, cfg)
    assert policy == {"adapter": {torch.float32}, "head": set(), "base": {torch.bfloat16}}
    assert critics == [{"adapter": {torch.float32}, "head": {torch.float32}, "base": {torch.bfloat16}}]
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    kl = [r["kl/k1"] for r in rows if "kl/k1" in r]
    assert kl and kl[-1] != 0  # the reference (adapter disabled) and the trained policy differ


def test_bf16_resume_continues_the_adapter_on_the_same_bf16_base(policy_dir, tok, tmp_path):
    torch.manual_seed(0)
    model, _ = _bf16_steps(prepare_for_training(load_causal_lm(str(policy_dir), tok), opts(precision="bf16")), tok)
    model.save_pretrained(tmp_path / "checkpoint")  # what a checkpoint holds of the model: the adapter
    resumed = prepare_for_training(load_causal_lm(str(tmp_path / "checkpoint"), tok), opts(precision="bf16"),
                                   resumed=True)
    assert _dtypes(resumed) == {"adapter": {torch.float32}, "head": set(), "base": {torch.bfloat16}}
    assert all(("lora_" in n) == p.requires_grad for n, p in resumed.named_parameters())
    ids, mask, _ = batch(tok, seed=4)
    with torch.no_grad():
        assert torch.equal(resumed(input_ids=ids, attention_mask=mask).logits,
                           model(input_ids=ids, attention_mask=mask).logits)
