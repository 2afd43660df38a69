"""Reward ensembles: how member scores combine, how an ensemble is named, and PPO running on one."""

from __future__ import annotations

import json

import pytest
import torch

from prefloop.errors import ModelLoadError
from prefloop.models import load_reward_model, sequence_scores
from prefloop.models.ensemble import RewardEnsemble, combine_scores, load_reward_scorer, reward_members


def test_combine_scores_by_hand():
    scores = torch.tensor([[1.0, 0.0, 2.0],
                           [3.0, 0.0, -2.0]])
    assert combine_scores(scores, "mean").tolist() == [2.0, 0.0, 0.0]
    assert combine_scores(scores, "min").tolist() == [1.0, 0.0, -2.0]
    # population std over two members: |a - b| / 2 -> 1, 0, 2
    assert combine_scores(scores, "mean-std", lam=0.5).tolist() == [1.5, 0.0, -1.0]
    with pytest.raises(ValueError, match="unknown ensemble mode"):
        combine_scores(scores, "median")
    with pytest.raises(ValueError, match="shape"):
        combine_scores(torch.zeros(3), "mean")


def test_reward_members_from_manifest_and_commas(tmp_path):
    assert reward_members("a, b,c") == ["a", "b", "c"]
    assert reward_members(str(tmp_path)) == [str(tmp_path)]  # a plain directory is one model
    (tmp_path / "ensemble.json").write_text(json.dumps({"members": ["members/0/model", "members/1/model"]}))
    assert reward_members(str(tmp_path)) == [str(tmp_path / "members/0/model"), str(tmp_path / "members/1/model")]
    (tmp_path / "ensemble.json").write_text('{"members": []}')
    with pytest.raises(ModelLoadError, match="ensemble.json: 'members' must be a non-empty list"):
        reward_members(str(tmp_path))
    (tmp_path / "ensemble.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="ensemble.json: not a JSON object"):
        reward_members(str(tmp_path))
    with pytest.raises(ModelLoadError, match="empty"):
        reward_members(" , ")


def test_ensemble_scores_combine_member_scores(tmp_path, policy_dir, tokenizer):
    a = load_reward_model(str(policy_dir), tokenizer, new_head=True)
    torch.manual_seed(1)
    b = load_reward_model(str(policy_dir), tokenizer, new_head=True)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    tokenizer.save_pretrained(tmp_path / "a")
    ids = torch.tensor([[5, 6, 7, 8], [0, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    with torch.no_grad():
        sa, sb = sequence_scores(a, ids, mask), sequence_scores(b, ids, mask)
        ens = load_reward_scorer(f"{tmp_path / 'a'},{tmp_path / 'b'}", tokenizer, "min")
        assert torch.allclose(ens(ids, mask), torch.minimum(sa, sb), atol=1e-5)
        assert torch.allclose(ens.member_scores(ids, mask), torch.stack([sa, sb]), atol=1e-5)
        single = RewardEnsemble([a])
        assert torch.allclose(single(ids, mask), sa)
    assert not any(p.requires_grad for p in ens.parameters())
    with pytest.raises(ModelLoadError):
        load_reward_scorer(str(tmp_path / "missing"), tokenizer)


def test_ppo_runs_on_an_ensemble_manifest(tmp_path, policy_dir, reward_dir, toy_data, monkeypatch):
    import prefloop.recipes.ppo as ppo
    from prefloop.runtime import read_metrics

    ens = tmp_path / "ens"
    ens.mkdir()
    (ens / "ensemble.json").write_text(json.dumps({"members": [str(reward_dir), str(reward_dir)]}))
    cfg = ppo.PPOConfig(policy=str(policy_dir), reward=str(ens), prompts=toy_data["prompts"], out=tmp_path / "ppo",
                        max_steps=2, rollout_batch_size=8, batch_size=8, max_new_tokens=6, max_length=48,
                        ensemble_mode="mean-std", ensemble_lambda=2.0)
    loaded = []
    load_models = ppo.load_models

    def recording(*args):
        loaded.append(load_models(*args))
        return loaded[-1]

    monkeypatch.setattr(ppo, "load_models", recording)
    ppo.run_ppo(cfg)
    assert len(loaded[0][3].members) == 2  # the reward model PPO scored with
    rows = read_metrics(cfg.out / "metrics.jsonl")
    assert len(rows) == 2 and all(r["rollout/reward_raw"] == r["rollout/reward_raw"] for r in rows)
    assert (cfg.out / "critic" / "config.json").exists()
