"""Reward models beyond pairs, on records of the synthetic world: K-way rankings (all pairs, Plackett-Luce),
ratings (regression, ordinal), and an ensemble of two that the ensemble loader reads."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from prefloop.cli import main
from prefloop.data import read_ratings
from prefloop.data.splits import split_by_prompt
from prefloop.errors import ConfigError, DataError
from prefloop.recipes.reward import RewardConfig, run_reward
from prefloop.runtime import read_metrics

PERSONAS = ["expert", "demonstrator", "troll", "overcautious", "rambler"]


@pytest.fixture(scope="module")
def world_feedback(tmp_path_factory) -> dict[str, Path]:
    """A micro Llama with a tokenizer trained on the tiny world's corpus, and ranking and rating records
    of persona responses labelled by the world's simulated annotators (without label noise)."""
    from prefloop.recipes.pretrain import new_model, train_tokenizer
    from prefloop.world import WorldConfig, build_world
    from prefloop.world.annotators import label_rankings, label_ratings, make_annotators

    world = build_world(WorldConfig.preset("tiny"))
    d = tmp_path_factory.mktemp("world_rm")
    tok = train_tokenizer(world.corpus[:800], vocab_size=400)
    torch.manual_seed(0)
    new_model(tok, "llama", "micro", 128).save_pretrained(d / "policy")
    tok.save_pretrained(d / "policy")
    rng = random.Random(0)
    prompts = world.train_prompts[:240]
    responses = [[world.persona_response(p, name, rng) for name in rng.sample(PERSONAS, 4)] for p in prompts]
    people = make_annotators(4, noise=0.0, seed=0, gold=world.gold)
    rankings = label_rankings(prompts, responses, people)
    ratings = label_ratings([p for p in prompts for _ in range(2)], [r for rs in responses for r in rs[:2]], people)
    for name, rows in (("rankings", rankings), ("ratings", ratings)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"policy": d / "policy", "rankings": d / "rankings.jsonl", "ratings": d / "ratings.jsonl"}


def train(world_feedback, out: Path, data: str, **kw) -> dict:
    cfg = RewardConfig(model=str(world_feedback["policy"]), data=world_feedback[data], out=out, epochs=2.0,
                       lr=3e-3, batch_size=16, max_length=96, eval_fraction=0.2, seed=0, **kw)
    return run_reward(cfg)


def mean_loss(out: Path, key: str, first: bool, n: int = 8) -> float:
    rows = [r for r in read_metrics(out / "metrics.jsonl") if key in r]
    part = rows[:n] if first else rows[-n:]
    return sum(r[key] for r in part) / len(part)


@pytest.mark.parametrize("ranking_loss", ["pairs", "plackett-luce"])
def test_rankings_train_a_reward_model(tmp_path, world_feedback, ranking_loss):
    meta = train(world_feedback, tmp_path / "rm", "rankings", ranking_loss=ranking_loss)
    m = meta["metrics"]
    assert m["data_kind"] == "rankings" and m["train_rankings"] + m["eval_rankings"] == 240
    assert mean_loss(tmp_path / "rm", "loss/reward", False) < mean_loss(tmp_path / "rm", "loss/reward", True) - 0.15
    # Held-out pairwise accuracy over all C(4, 2) = 6 pairs of each held-out ranking (chance: 0.5).
    assert m["eval/pairs"] == 6 * m["eval_rankings"]
    assert m["eval/accuracy"] >= 0.7
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "model").config.num_labels == 1


@pytest.mark.parametrize("rating_loss", ["regression", "ordinal"])
def test_ratings_train_a_reward_model(tmp_path, world_feedback, rating_loss):
    meta = train(world_feedback, tmp_path / "rm", "ratings", rating_loss=rating_loss)
    m = meta["metrics"]
    assert m["data_kind"] == "ratings"
    assert mean_loss(tmp_path / "rm", "loss/rating", False) < mean_loss(tmp_path / "rm", "loss/rating", True) - 0.1
    assert m["eval/pair_accuracy"] >= 0.7
    # The predicted rating beats the best constant guess (the training median) in mean absolute error.
    train_set, held = split_by_prompt(read_ratings(world_feedback["ratings"]), 0.2, 0)
    median = statistics.median(r.rating for r in train_set)
    assert m["eval/mae"] < sum(abs(r.rating - median) for r in held) / len(held) - 0.2
    if rating_loss == "ordinal":
        th = meta["ordinal"]["thresholds"]
        assert meta["ordinal"]["scale"] == [1, 7] and len(th) == 6 and all(a < b for a, b in zip(th, th[1:]))


def test_ensemble_of_two_writes_manifest_and_members_load(tmp_path, policy_dir, toy_data):
    from prefloop.data import right_pad
    from prefloop.models import load_tokenizer
    from prefloop.models.ensemble import load_reward_scorer

    out = tmp_path / "ens"
    cfg = RewardConfig(model=str(policy_dir), data=toy_data["pairs"], out=out, max_steps=4, batch_size=8,
                       lr=3e-3, max_length=64, eval_fraction=0.2, seed=5, ensemble_size=2)
    meta = run_reward(cfg)
    manifest = json.loads((out / "ensemble.json").read_text())
    assert manifest == {"members": ["members/0/model", "members/1/model"]}
    seeds = [json.loads((out / "members" / str(i) / "prefloop.json").read_text())["config"]["seed"] for i in (0, 1)]
    assert seeds == [5, 6]
    # Same held-out split for every member, so their held-out metrics are comparable.
    assert meta["metrics"]["members"][0]["eval_comparisons"] == meta["metrics"]["members"][1]["eval_comparisons"] > 0
    assert "eval/accuracy_member_mean" in meta["metrics"]
    # Held-out accuracy of the combined score, in each mode the ensemble loader offers.
    for mode in ("mean", "min", "mean-std"):
        assert 0.0 <= meta["metrics"][f"ensemble_{mode}/accuracy"] <= 1.0
    # Different seeds give different members (head init and data order).
    heads = [AutoModelForSequenceClassification.from_pretrained(out / m).score.weight for m in manifest["members"]]
    assert not torch.allclose(heads[0], heads[1])
    # The ensemble loader reads the directory and combines the members' scores.
    tok = load_tokenizer(str(policy_dir))
    ids, mask = right_pad([tok("User: What is 1 plus 2?\nAssistant: It is good 3.")["input_ids"],
                          tok("User: What is 1 plus 2?\nAssistant: It is bad 3.")["input_ids"]], tok.pad_token_id)
    mean = load_reward_scorer(str(out), tok, "mean")
    worst = load_reward_scorer(str(out), tok, "min")
    assert len(mean.members) == 2
    with torch.no_grad():
        member_scores = mean.member_scores(ids, mask)
        torch.testing.assert_close(mean(ids, mask), member_scores.mean(0))
        torch.testing.assert_close(worst(ids, mask), member_scores.min(0).values)
    # --resume keeps finished members (their weights are not retrained).
    before = (out / "members" / "0" / "model" / "model.safetensors").stat().st_mtime_ns
    run_reward(RewardConfig(**{**cfg.__dict__, "resume": True}))
    assert (out / "members" / "0" / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_ensemble_of_ordinal_rating_models(tmp_path, world_feedback):
    meta = train(world_feedback, tmp_path / "ens", "ratings", rating_loss="ordinal", ensemble_size=2, max_steps=2)
    m = meta["metrics"]
    assert all("eval/mae" in member and "eval/pair_accuracy" in member for member in m["members"])
    assert 0.0 <= m["ensemble_mean/pair_accuracy"] <= 1.0
    # Members have thresholds of their own, so the combined score has no rating scale: no MAE for it.
    assert "ensemble_mean/mae" not in m
    manifest = json.loads((tmp_path / "ens" / "ensemble.json").read_text())["members"]
    assert all((tmp_path / "ens" / p / "model.safetensors").exists() for p in manifest)


def test_bad_feedback_is_refused_with_file_and_line(tmp_path, world_feedback, policy_dir, toy_data, capsys):
    rows = [json.loads(x) for x in world_feedback["ratings"].read_text().splitlines()[:4]]
    rows[2] = {**rows[2], "rating": 2, "scale": [1, 3]}
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"mixed.jsonl:3: --rating-loss ordinal"):
        run_reward(RewardConfig(model=str(world_feedback["policy"]), data=mixed, out=tmp_path / "o",
                                rating_loss="ordinal"))
    with pytest.raises(DataError, match=r"pairs.jsonl:1: missing field 'responses'"):
        run_reward(RewardConfig(model=str(policy_dir), data=toy_data["pairs"], out=tmp_path / "o",
                                data_kind="rankings"))
    with pytest.raises(ConfigError, match="--use-margin"):
        run_reward(RewardConfig(model=str(policy_dir), data=world_feedback["rankings"], out=tmp_path / "o",
                                use_margin=True))
    assert not (tmp_path / "o" / "model").exists()
    bad = tmp_path / "rankings.jsonl"
    good = world_feedback["rankings"].read_text().splitlines()[0]
    bad.write_text(good + "\n" + json.dumps({**json.loads(good), "ranking": [0, 0, 1, 2]}) + "\n")
    # The command line (in process) prints one line naming file and line, and exits with 2.
    assert main(["reward", "--model", str(policy_dir), "--data", str(bad), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "rankings.jsonl:2" in err and "'ranking'" in err


@pytest.mark.slow  # four runs, two of them with two processes through accelerate launch (~60 s)
@pytest.mark.parametrize("data,flags", [("rankings", ["--ranking-loss", "plackett-luce"]),
                                        ("ratings", ["--rating-loss", "ordinal"])])
def test_two_processes_match_one(tmp_path, world_feedback, data, flags):
    from .test_distributed import launch
    from .test_resume import weights

    common = dict(model=str(world_feedback["policy"]), data=world_feedback[data], max_steps=3, batch_size=8,
                  max_length=96, lr=3e-3, eval_fraction=0.2)
    args = ["--model", common["model"], "--data", str(common["data"]), "--max-steps", "3", "--batch-size", "8",
            "--max-length", "96", "--lr", "3e-3", "--eval-fraction", "0.2", *flags]
    res = launch("reward", *args, "--out", str(tmp_path / "ddp"))
    assert res.returncode == 0, res.stderr[-3000:]
    extra = {"ranking_loss": "plackett-luce"} if data == "rankings" else {"rating_loss": "ordinal"}
    one = run_reward(RewardConfig(**common, **extra, out=tmp_path / "one"))
    # Two processes sum the gradient in another order; Adam divides by sqrt(v), so a weight whose gradient is
    # near 0 can move by ~lr * 1e-3 more or less (seen: 1 of 2,048 by 1e-5): compare at that scale.
    w_one, w_two = weights(tmp_path / "one" / "model"), weights(tmp_path / "ddp" / "model")
    assert w_one.keys() == w_two.keys()
    for k in w_one:
        torch.testing.assert_close(w_one[k], w_two[k], atol=3e-5, rtol=1e-4)
    two = json.loads((tmp_path / "ddp" / "prefloop.json").read_text())
    if data == "ratings":
        assert two["ordinal"]["thresholds"] == pytest.approx(one["ordinal"]["thresholds"], rel=1e-4)


@pytest.mark.slow  # two runs in fresh processes (~15 s)
def test_ordinal_resume_after_kill_restores_thresholds(tmp_path, world_feedback):
    from .test_resume import assert_same, cli, weights

    args = ["reward", "--model", str(world_feedback["policy"]), "--data", str(world_feedback["ratings"]),
            "--rating-loss", "ordinal", "--max-steps", "6", "--batch-size", "8", "--max-length", "96", "--lr", "3e-3",
            "--save-every", "3"]
    full = run_reward(RewardConfig(model=str(world_feedback["policy"]), data=world_feedback["ratings"],
                                   rating_loss="ordinal", max_steps=6, batch_size=8, max_length=96, lr=3e-3,
                                   save_every=3, out=tmp_path / "full"))
    killed = cli(args + ["--out", str(tmp_path / "k")], kill_after=3)
    assert killed.returncode == -9
    resumed = cli(args + ["--out", str(tmp_path / "k"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same(weights(tmp_path / "full" / "model"), weights(tmp_path / "k" / "model"))
    again = json.loads((tmp_path / "k" / "prefloop.json").read_text())
    assert again["ordinal"]["thresholds"] == pytest.approx(full["ordinal"]["thresholds"], rel=1e-5)
