"""DPO, IPO and cDPO a few steps on a micro model: the loss falls and implicit-reward accuracy rises."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefloop.cli import main
from prefloop.data import read_comparisons
from prefloop.data.encode_more import encode_pair_with_prompt
from prefloop.errors import ConfigError
from prefloop.models import load_causal_lm, load_tokenizer
from prefloop.recipes.dpo import DPOConfig, SequenceLogprobs, pair_logprobs, run_dpo
from prefloop.runtime import read_metrics


def dpo_config(tmp_path, policy_dir, toy_data, **kw) -> DPOConfig:
    base = dict(model=str(policy_dir), data=toy_data["pairs"], out=tmp_path / "dpo", max_steps=12, batch_size=16,
                lr=2e-3, warmup_ratio=0.0, max_length=64, eval_fraction=0.2, seed=0)
    return DPOConfig(**{**base, **kw})


def test_dpo_learns_the_preference(tmp_path, policy_dir, toy_data):
    cfg = dpo_config(tmp_path, policy_dir, toy_data, beta=0.5)
    meta = run_dpo(cfg)
    rows = [r for r in read_metrics(cfg.out / "metrics.jsonl") if "loss/dpo" in r]
    assert len(rows) == 12
    # Step 1: policy == reference, every implicit reward is 0, the loss is log 2 and no pair is ordered.
    assert rows[0]["loss/dpo"] == pytest.approx(0.6931, abs=1e-3)
    assert rows[0]["rewards/accuracy"] == 0.0
    late = rows[-4:]
    assert sum(r["loss/dpo"] for r in late) / 4 < rows[0]["loss/dpo"] - 0.2
    assert min(r["rewards/accuracy"] for r in late) >= 0.8
    assert all(r["rewards/margin"] > 0 and r["rewards/chosen"] > r["rewards/rejected"] for r in late)
    # Held-out prompts: the implicit reward orders unseen pairs too.
    assert meta["metrics"]["eval/accuracy"] >= 0.8 and meta["metrics"]["eval_comparisons"] > 0
    # Plain transformers loads the result; prefloop.json records the loss.
    assert AutoModelForCausalLM.from_pretrained(cfg.out / "model") is not None
    assert json.loads((cfg.out / "prefloop.json").read_text())["config"]["loss"] == "sigmoid"
    # The final model really raises chosen over rejected relative to the initial policy on training pairs.
    tok = load_tokenizer(str(policy_dir))
    pairs = [encode_pair_with_prompt(tok, c, 64) for c in read_comparisons(toy_data["pairs"])[:32]]
    after = pair_logprobs(SequenceLogprobs(load_causal_lm(str(cfg.out / "model"), tok)), pairs, tok.pad_token_id,
                          "cpu", 32)
    before = pair_logprobs(SequenceLogprobs(load_causal_lm(str(policy_dir), tok)), pairs, tok.pad_token_id, "cpu", 32)
    h = (after.chosen - before.chosen) - (after.rejected - before.rejected)
    assert (h > 0).float().mean() >= 0.9


@pytest.mark.parametrize("loss,extra", [("ipo", {"beta": 0.5}), ("cdpo", {"label_smoothing": 0.2}),
                                        ("sigmoid", {"precompute_reference": False})])
def test_each_loss_variant_runs_and_learns(tmp_path, policy_dir, toy_data, loss, extra):
    cfg = dpo_config(tmp_path, policy_dir, toy_data, loss=loss, max_steps=6, eval_fraction=0.0, **extra)
    run_dpo(cfg)
    rows = [r for r in read_metrics(cfg.out / "metrics.jsonl") if "loss/dpo" in r]
    assert rows[-1]["loss/dpo"] < rows[0]["loss/dpo"]
    assert rows[-1]["rewards/margin"] > 0
    assert (cfg.out / "model" / "model.safetensors").exists()


def test_reference_on_the_fly_equals_precomputed(tmp_path, policy_dir, toy_data):
    # Same seed and data: computing the reference each step must give the same training curve.
    a = dpo_config(tmp_path, policy_dir, toy_data, max_steps=3, eval_fraction=0.0, out=tmp_path / "a")
    b = dpo_config(tmp_path, policy_dir, toy_data, max_steps=3, eval_fraction=0.0, out=tmp_path / "b",
                   precompute_reference=False)
    run_dpo(a)
    run_dpo(b)
    ra, rb = read_metrics(a.out / "metrics.jsonl"), read_metrics(b.out / "metrics.jsonl")
    for x, y in zip(ra, rb):
        assert x["loss/dpo"] == pytest.approx(y["loss/dpo"], rel=1e-4, abs=1e-5)


def test_bad_options_and_data(tmp_path, policy_dir, toy_data, capsys):
    with pytest.raises(ConfigError, match="--beta"):
        run_dpo(dpo_config(tmp_path, policy_dir, toy_data, beta=0.0))
    with pytest.raises(ConfigError, match="--label-smoothing"):
        run_dpo(dpo_config(tmp_path, policy_dir, toy_data, loss="cdpo", label_smoothing=0.5))
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": " b", "rejected": " c"}\n{"prompt": "a", "chosen": " b"}\n')
    # The command line (in process): one line naming file and line, exit code 2, nothing written.
    assert main(["dpo", "--model", str(policy_dir), "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "pairs.jsonl:2" in err and "rejected" in err
    with pytest.raises(SystemExit) as e:  # an unknown loss is refused by the parser itself
        main(["dpo", "--model", str(policy_dir), "--data", str(bad), "--loss", "kto"])
    assert e.value.code == 2 and "kto" in capsys.readouterr().err
    assert not (tmp_path / "o" / "model").exists()


@pytest.mark.slow  # three runs, two of them in fresh processes (~10 s)
def test_dpo_resume_after_kill_ends_with_the_same_weights(tmp_path, policy_dir, toy_data):
    from .test_resume import assert_same, cli, weights

    args = ["dpo", "--model", str(policy_dir), "--data", str(toy_data["pairs"]), "--max-steps", "6",
            "--batch-size", "8", "--max-length", "64", "--lr", "1e-3", "--save-every", "3", "--eval-fraction", "0"]
    run_dpo(DPOConfig(model=str(policy_dir), data=toy_data["pairs"], max_steps=6, batch_size=8, max_length=64,
                      lr=1e-3, save_every=3, eval_fraction=0.0, out=tmp_path / "full"))
    killed = cli(args + ["--out", str(tmp_path / "k")], kill_after=3)
    assert killed.returncode == -9
    assert (tmp_path / "k" / "checkpoint" / "state.pt").exists() and not (tmp_path / "k" / "model").exists()
    resumed = cli(args + ["--out", str(tmp_path / "k"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same(weights(tmp_path / "full" / "model"), weights(tmp_path / "k" / "model"))
    assert [r["step"] for r in read_metrics(tmp_path / "k" / "metrics.jsonl")] == list(range(1, 7))


def test_sequence_logprobs_match_a_plain_forward(policy_dir, toy_data):
    # Summed response log-probs of padded 2B-row batches equal those of each sequence alone, unpadded.
    tok = load_tokenizer(str(policy_dir))
    lm = load_causal_lm(str(policy_dir), tok)
    pairs = [encode_pair_with_prompt(tok, c, 64) for c in read_comparisons(toy_data["pairs"])[:3]]
    got = pair_logprobs(SequenceLogprobs(lm), pairs, tok.pad_token_id, "cpu", 3)
    for i, p in enumerate(pairs):
        for seq, (logp, count) in (((p.chosen, (got.chosen, got.chosen_tokens))),
                                   ((p.rejected, (got.rejected, got.rejected_tokens)))):
            with torch.no_grad():
                logits = lm(torch.tensor([seq])).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(seq[1:]).unsqueeze(1)).squeeze(1)
            assert logp[i].item() == pytest.approx(lp[p.prompt_len - 1:].sum().item(), rel=1e-4, abs=1e-4)
            assert count[i].item() == len(seq) - p.prompt_len


@pytest.mark.slow  # two processes through accelerate launch (~30 s)
def test_dpo_two_processes_match_one(tmp_path, policy_dir, toy_data):
    # The global batch is split over 2 processes and DDP averages their gradients: the same weights as one
    # process on the whole batch.
    from .test_distributed import launch
    from .test_resume import assert_same, weights

    args = ["--model", str(policy_dir), "--data", str(toy_data["pairs"]), "--max-steps", "3", "--batch-size", "8",
            "--max-length", "64", "--lr", "1e-3", "--eval-fraction", "0"]
    res = launch("dpo", *args, "--out", str(tmp_path / "ddp"))
    assert res.returncode == 0, res.stderr[-3000:]
    run_dpo(DPOConfig(model=str(policy_dir), data=toy_data["pairs"], max_steps=3, batch_size=8, max_length=64,
                      lr=1e-3, eval_fraction=0.0, out=tmp_path / "one"))
    assert_same(weights(tmp_path / "one" / "model"), weights(tmp_path / "ddp" / "model"))
    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["loss/dpo"] for r in two] == pytest.approx([r["loss/dpo"] for r in one], rel=1e-4)
