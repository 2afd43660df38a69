"""The memory planner (prefloop.plan, `prefloop plan`): shapes and parameter counts against transformers and the
published totals, each term moving the way the policy it models says, the activation estimate against the
tensors autograd really saves, and the command line's output and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prefloop import plan_cli
from prefloop.plan import (
    PRESETS,
    GiB,
    Setup,
    load_shape,
    plan,
    shape_from_config,
    trunk_activation_bytes,
)

SMALL = PRESETS["llama-3-8b"]


def _plan(recipe: str, **kw):
    return plan(SMALL, Setup(recipe=recipe, **kw))


# -- shapes ----------------------------------------------------------------------------------------------------


def test_presets_match_the_published_parameter_counts():
    # the totals on the models' cards / safetensors indexes
    published = {"qwen2-0.5b": 494_032_768, "llama-3.2-1b": 1_235_814_400, "llama-3-8b": 8_030_261_248,
                 "llama-2-13b": 13_015_864_320}
    assert {k: s.lm_params() for k, s in PRESETS.items()} == published


@pytest.mark.parametrize("kind,tied", [("qwen2", True), ("qwen2", False), ("llama", False)])
def test_shape_from_config_counts_what_transformers_builds(kind, tied):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, Qwen2Config

    cls = Qwen2Config if kind == "qwen2" else LlamaConfig
    extra = {} if kind == "qwen2" else {"head_dim": 24}  # a head size other than hidden / heads
    cfg = cls(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=96, tie_word_embeddings=tied, pad_token_id=0, num_labels=1, **extra)
    torch.manual_seed(0)
    shape = shape_from_config(cfg.to_dict(), kind)
    lm = AutoModelForCausalLM.from_config(cfg)
    rm = AutoModelForSequenceClassification.from_config(cfg)
    assert shape.lm_params() == sum(p.numel() for p in lm.parameters())
    assert shape.reward_params() == sum(p.numel() for p in rm.parameters())


def test_load_shape_reads_a_model_directory_and_names_bad_fields(tmp_path):
    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "intermediate_size": 96, "vocab_size": 300}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shape = load_shape(str(tmp_path))
    assert (shape.layers, shape.kv_heads, shape.tied) == (2, 4, False)  # kv heads default to heads
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_size": "64"}))
    with pytest.raises(Exception, match=r"config.json: field 'hidden_size' must be a positive integer"):
        load_shape(str(tmp_path))
    with pytest.raises(Exception, match="mixture-of-experts"):
        shape_from_config({**cfg, "num_local_experts": 8}, "moe")


# -- each term moves the right way ----------------------------------------------------------------------------


def test_lora_base_is_bf16_under_bf16_and_only_the_adapter_has_fp32_masters_and_states():
    full, lora = _plan("sft"), _plan("sft", lora_r=16)
    adapter = SMALL.lora_params(16)
    assert lora.term("weights") == adapter * 4  # fp32 masters of the adapter only
    assert lora.term("frozen base") == SMALL.lm_params() * 2  # the base in bf16 (models/lora.py: frozen_base_dtype)
    assert _plan("sft", lora_r=16, precision="fp32").term("frozen base") == SMALL.lm_params() * 4
    assert _plan("sft", lora_r=16, precision="fp16").term("frozen base") == SMALL.lm_params() * 4
    assert full.term("frozen base") == 0 and full.term("weights") == SMALL.lm_params() * 4
    assert lora.term("optimizer states") == adapter * 8  # two fp32 moments per adapter weight
    assert lora.term("gradients") == adapter * 4
    assert lora.term("optimizer states") < full.term("optimizer states") / 50
    # PPO's critic, a LoRA on the reward model: its base is bf16 too, its adapter and score head fp32
    ppo = _plan("ppo", lora_r=16)
    assert ppo.term("frozen base") == (SMALL.lm_params() + SMALL.reward_params()) * 2
    assert ppo.term("weights") == (adapter + SMALL.lora_params(16) + SMALL.hidden) * 4


def test_lora_reference_is_the_policy_without_its_adapter():
    assert _plan("ppo").term("frozen reference") == SMALL.lm_params() * 2  # bf16 copy
    assert _plan("ppo", lora_r=8).term("frozen reference") == 0
    assert _plan("grpo", kl_coef=0.0).term("frozen reference") == 0  # no KL: no reference loaded


def test_frozen_models_are_bf16_only_under_bf16():
    bf16, fp32 = _plan("ppo", precision="bf16"), _plan("ppo", precision="fp32")
    assert fp32.term("frozen reward model") == 2 * bf16.term("frozen reward model")
    assert fp32.term("frozen reference") == 2 * bf16.term("frozen reference")
    assert _plan("ppo", precision="fp16").term("frozen reference") == fp32.term("frozen reference")
    assert bf16.term("weights") == fp32.term("weights")  # fp32 masters in every mode


def test_gradient_checkpointing_lowers_activations_only():
    off, on = _plan("dpo"), _plan("dpo", gradient_checkpointing=True)
    assert on.term("activations") < off.term("activations") / 4
    for name in ("weights", "optimizer states", "gradients", "logits chunk"):
        assert on.term(name) == off.term(name)


@pytest.mark.parametrize("recipe", ["sft", "dpo", "ppo", "grpo"])
def test_fsdp2_divides_the_sharded_terms_by_the_processes(recipe):
    one = _plan(recipe, micro_batch_size=2)
    eight = _plan(recipe, micro_batch_size=2, processes=8, sharding="fsdp2")
    sharded = [t.name for t in one.terms if t.name in ("weights", "optimizer states", "gradients")
               or t.name.startswith("frozen")]
    assert sharded
    for name in sharded:
        assert eight.term(name) == pytest.approx(one.term(name) / 8), name
    assert eight.term("activations") == one.term("activations")  # per-process micro-batch unchanged
    assert eight.term("FSDP2 gathered") > 0 and one.term("FSDP2 gathered") == 0


def test_ppo_critic_and_dpo_reference_pass():
    reward, head = _plan("ppo"), _plan("ppo", critic="value-head")
    assert reward.term("weights") == pytest.approx((SMALL.lm_params() + SMALL.reward_params()) * 4)
    assert head.term("weights") == (SMALL.lm_params() + SMALL.hidden + 1) * 4
    assert reward.term("activations") == pytest.approx(2 * head.term("activations"), rel=0.01)  # one loss, both alive
    pre = _plan("dpo")
    assert {t.phase for t in pre.terms if t.name == "frozen reference"} == {"reference"}
    assert {t.phase for t in _plan("dpo", precompute_reference=False).terms
            if t.name == "frozen reference"} == {"always"}


def test_kv_cache_follows_the_rollout_micro_batch():
    whole, chunked = _plan("grpo"), _plan("grpo", rollout_micro_batch_size=16)
    assert chunked.term("KV cache") == whole.term("KV cache") / 4  # 64 completions in chunks of 16
    s = SMALL
    assert whole.term("KV cache") == 64 * 256 * s.layers * 2 * s.kv_heads * s.hd * 2


def test_gradients_meet_activations_only_when_micro_batches_accumulate():
    single, accum = _plan("sft"), _plan("sft", micro_batch_size=4)
    assert [t.phase for t in single.terms if t.name == "gradients"] == ["step"]
    assert [t.phase for t in accum.terms if t.name == "gradients"] == ["train"]


# -- the activation estimate against what autograd saves -------------------------------------------------------


def _saved_bytes(model, ids) -> int:
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:  # weights saved for the input's gradient are not activations
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return sum(seen.values())


def test_activation_estimate_is_within_a_quarter_of_what_autograd_saves():
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=160, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).train()
    batch, seq = 4, 48
    ids = torch.randint(0, 256, (batch, seq))
    measured = _saved_bytes(model, ids)
    shape = shape_from_config(cfg.to_dict(), "tiny")
    predicted = trunk_activation_bytes(shape, Setup(recipe="sft", precision="fp32"), batch * seq, seq)
    assert 0.75 <= measured / predicted <= 1.25, (measured, predicted)

    from prefloop.models.lora import enable_gradient_checkpointing

    enable_gradient_checkpointing(model)
    kept = _saved_bytes(model, ids)  # with checkpointing the forward keeps the blocks' inputs only
    ckpt = trunk_activation_bytes(shape, Setup(recipe="sft", precision="fp32", gradient_checkpointing=True),
                                  batch * seq, seq)
    assert kept < measured / 4 and kept <= ckpt < predicted


# -- the command line -----------------------------------------------------------------------------------------


def test_recipe_defaults_are_the_trainers():
    from prefloop.recipes.dpo import DPOConfig
    from prefloop.recipes.grpo import GRPOConfig, RLOOConfig
    from prefloop.recipes.ppo import PPOConfig
    from prefloop.recipes.reward import RewardConfig
    from prefloop.recipes.sft import SFTConfig

    classes = {"sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig, "ppo": PPOConfig, "grpo": GRPOConfig,
               "rloo": RLOOConfig}
    for recipe, defaults in plan_cli.RECIPE_DEFAULTS.items():
        cfg = classes[recipe]()
        assert {k: getattr(cfg, k) for k in defaults} == defaults, recipe


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "prefloop.cli", "plan", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_prints_terms_total_and_fit_without_importing_torch():
    args = ["--recipe", "grpo", "--model", "llama-3.2-1b", "--lora-r", "16", "--gpu-memory", "80"]
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for word in ("weights", "optimizer states", "gradients", "frozen reward model", "activations", "KV cache",
                 "peak per GPU:", "\nfits in 80 GiB"):
        assert word in out, word
    assert "does not fit in 24 GiB" in _cli(*args[:-1], "24").stdout  # 38 GiB: the whole batch of 64 at once
    peak = plan(PRESETS["llama-3.2-1b"], plan_cli.setup_of(plan_cli.PlanConfig(recipe="grpo", lora_r=16))).peak
    assert f"peak per GPU: {peak / GiB:.2f} GiB" in out
    code = "import sys; from prefloop.plan_cli import main; main(['--model', 'qwen2-0.5b']); " \
           "print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60).stdout.strip().endswith("False")


@pytest.mark.parametrize("args,message", [
    (["--model", "no-such-model"], "--model no-such-model: neither a preset"),
    (["--model", "qwen2-0.5b", "--micro-batch-size", "0"], "--micro-batch-size must be >= 1"),
    (["--model", "qwen2-0.5b", "--sharding", "fsdp2"], "--sharding fsdp2 needs --processes of 2 or more"),
    (["--model", "qwen2-0.5b", "--gpu-memory", "-1"], "--gpu-memory must be > 0"),
    (["--recipe", "ppo"], "--model is required"),
    (["--model", "qwen2-0.5b", "--max-length", "64", "--max-new-tokens", "64"], "must be below --max-length"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and message in proc.stderr


def test_table_has_every_recipe_size_and_configuration():
    cfg = plan_cli.PlanConfig(table=True, micro_batch_size=4, max_length=1024, max_new_tokens=256,
                              rollout_micro_batch_size=16, gradient_checkpointing=True)
    rows = [ln for ln in plan_cli.run_plan(cfg).splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert len(rows) == 3 * 4
    cells = {tuple(c.strip() for c in r.strip("|").split("|")[:2]): r.strip("|").split("|")[2:] for r in rows}
    assert set(cells) == {(r, m) for r in ("ppo", "grpo", "dpo") for m in ("0.5B", "1B", "8B", "13B")}
    # each cell: the plan's peak and the smallest GPU size whose memory holds it with the slack
    peak = plan(PRESETS["llama-3-8b"], plan_cli.setup_of(cfg, "grpo", lora_r=16)).peak
    assert cells[("grpo", "8B")][1].strip() == f"{peak / GiB:.1f} GiB: {plan_cli.smallest_gpu(peak)}"
    assert plan_cli.smallest_gpu(0) == "24 GB" and plan_cli.smallest_gpu(200 * GiB) == "none"
    assert plan_cli.smallest_gpu(30 * GiB) == "48 GB"  # 30 x 1.1 + 1 = 34 GiB: not 24, but 45


def test_help_lists_the_trainers_option_names():
    proc = _cli("--help")
    assert proc.returncode == 0
    for opt in ("--lora-r", "--gradient-checkpointing", "--micro-batch-size", "--rollout-micro-batch-size",
                "--gpu-memory", "--sharding"):
        assert opt in proc.stdout, opt
    assert "TRL" not in proc.stdout  # the trainers' TRL aliases do not apply to the plan


def test_micro_batch_is_at_most_the_process_share():
    assert Setup(recipe="sft", batch_size=16, micro_batch_size=64).micro == 16
    assert Setup(recipe="sft", batch_size=16, processes=8, sharding="fsdp2").micro == 2
    assert not Setup(recipe="sft", batch_size=16, micro_batch_size=64).accumulating
