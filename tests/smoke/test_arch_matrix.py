"""sft, reward, dpo, ppo and grpo on every supported architecture, a couple of steps each.

Each architecture's micro model (random weights, `prefloop.models.arch_config`) is saved once per session
with the shared test tokenizer. The default run covers every architecture and every recipe along a
diagonal (architecture i runs recipe i mod 5); the full cross product is marked slow. Each run checks a
number that a wrong logits path would change, not only that it ran:
- sft: the loss logged at step 1 is the initial model's own cross-entropy (HF `labels=` loss) on that batch;
- dpo: the loss at step 1 is log 2 (policy == reference), so the policy and reference paths agree;
- ppo, grpo: the sampler's log-probs equal the training forward's (rollout/logprob_gap ~ 0) and the KL to
  the reference is ~0 at the first update;
- reward: the saved reward model scores like the trained one; Cohere and Granite, which transformers ships
  without a sequence-classification class, are refused with a one-line error.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from prefloop.errors import ModelLoadError
from prefloop.models import ARCHITECTURES, arch_config
from prefloop.runtime import read_metrics

RECIPES = ("sft", "reward", "dpo", "ppo", "grpo")
NO_SEQUENCE_CLASSIFIER = ("cohere", "granite")
CASES = [pytest.param(arch, recipe, marks=() if i % len(RECIPES) == j else pytest.mark.slow, id=f"{arch}-{recipe}")
         for i, arch in enumerate(ARCHITECTURES) for j, recipe in enumerate(RECIPES)]


@pytest.fixture(scope="session")
def arch_dirs(tmp_path_factory, tokenizer):
    """Saved micro models, built on first use (a session-wide cache: each architecture is built once)."""
    root, built = tmp_path_factory.mktemp("archs"), {}

    def get(arch: str):
        if arch not in built:
            torch.manual_seed(0)
            cfg = arch_config(arch, len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
            model = transformers.AutoModelForCausalLM.from_config(cfg)
            model.save_pretrained(root / arch)
            tokenizer.save_pretrained(root / arch)
            built[arch] = root / arch
        return built[arch]

    return get


def first_batch_hf_loss(model_dir, data, cfg) -> float:
    """The initial model's own mean cross-entropy on SFT's first batch, computed the way HF does."""
    from prefloop.data import collate_sft
    from prefloop.recipes.common import BatchPlan
    from prefloop.recipes.sft import encode_demonstrations

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    examples = encode_demonstrations(tok, data, cfg.max_length)
    idx = BatchPlan([len(e.input_ids) for e in examples], cfg.batch_size, cfg.seed).batch(0)
    b = collate_sft([examples[i] for i in idx], tok.pad_token_id)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return float(model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss)


def run_sft_case(d, toy_data, out):
    from prefloop.recipes.sft import SFTConfig, run_sft

    cfg = SFTConfig(model=str(d), data=toy_data["demos"], out=out, max_steps=2, batch_size=8, max_length=48,
                    lr=1e-3, precision="fp32")
    run_sft(cfg)
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[0]["loss/sft"] == pytest.approx(first_batch_hf_loss(d, toy_data["demos"], cfg), abs=2e-5)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out / "model")
    assert type(reloaded).__name__ == type(transformers.AutoModelForCausalLM.from_pretrained(d)).__name__


def run_reward_case(arch, d, toy_data, out):
    from prefloop.models import load_reward_model, sequence_scores
    from prefloop.recipes.reward import RewardConfig, run_reward

    cfg = RewardConfig(model=str(d), data=toy_data["pairs"], out=out, max_steps=2, batch_size=8, max_length=48,
                       lr=1e-3, eval_fraction=0.1, precision="fp32")
    if arch in NO_SEQUENCE_CLASSIFIER:
        with pytest.raises(ModelLoadError, match=rf"{d}(/config.json)?: cannot load reward model"):
            run_reward(cfg)
        return
    meta = run_reward(cfg)
    assert math.isfinite(meta["metrics"]["eval/accuracy"])
    rm = load_reward_model(str(out / "model")).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        own = rm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.reshape(-1)
        assert float(own) == pytest.approx(float(sequence_scores(rm, ids, torch.ones_like(ids))), abs=1e-5)


def run_dpo_case(d, toy_data, out):
    from prefloop.recipes.dpo import DPOConfig, run_dpo

    run_dpo(DPOConfig(model=str(d), data=toy_data["pairs"], out=out, max_steps=2, batch_size=8, max_length=48,
                      lr=1e-3, eval_fraction=0.1, precision="fp32"))
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)


def run_rl_case(recipe, d, toy_data, reward_dir, out):
    if recipe == "ppo":
        from prefloop.recipes.ppo import PPOConfig, run_ppo

        run_ppo(PPOConfig(policy=str(d), reward=str(reward_dir), prompts=toy_data["prompts"], out=out,
                          max_steps=1, rollout_batch_size=8, batch_size=8, ppo_epochs=1, max_new_tokens=6,
                          max_length=48, critic="value-head", precision="fp32"))
    else:
        from prefloop.recipes.grpo import GRPOConfig, run_grpo

        run_grpo(GRPOConfig(policy=str(d), reward=str(reward_dir), prompts=toy_data["prompts"], out=out,
                            max_steps=1, num_generations=2, rollout_batch_size=8, batch_size=8,
                            max_new_tokens=6, max_length=48, precision="fp32"))
    row = read_metrics(out / "metrics.jsonl")[0]
    assert row["rollout/logprob_gap"] < 1e-4
    assert abs(row["kl/k1"]) < 1e-4


@pytest.mark.parametrize("arch,recipe", CASES)
def test_recipe_on_architecture(arch, recipe, arch_dirs, toy_data, reward_dir, tmp_path):
    d = arch_dirs(arch)
    out = tmp_path / recipe
    if recipe == "sft":
        run_sft_case(d, toy_data, out)
    elif recipe == "reward":
        run_reward_case(arch, d, toy_data, out)
    elif recipe == "dpo":
        run_dpo_case(d, toy_data, out)
    else:
        run_rl_case(recipe, d, toy_data, reward_dir, out)


def test_diagonal_covers_every_architecture_and_recipe():
    fast = [p.values for p in CASES if not p.marks]
    assert {a for a, _ in fast} == set(ARCHITECTURES) and {r for _, r in fast} == set(RECIPES)
