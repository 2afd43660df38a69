"""Simulated annotators: Bradley-Terry choices, noise, pool biases, ratings, rankings and records."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from prefloop.world import (
    POOLS,
    Annotator,
    WorldConfig,
    build_world,
    format_prompt,
    label_pairs,
    label_rankings,
    label_ratings,
    make_annotators,
)


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig.preset("tiny"))


@pytest.fixture(scope="module")
def demo_pairs(world):
    """Pairs of demonstrator responses to the same train prompt, gold ties left out."""
    rng = random.Random(5)
    out = []
    while len(out) < 1500:
        p = rng.choice(world.train_prompts)
        a, b = (world.persona_response(p, "demonstrator", rng) for _ in range(2))
        if world.gold.score(p, a) != world.gold.score(p, b):
            out.append((p, a, b))
    return out


def agreement(world, pairs, annotators, seed=0):
    recs = label_pairs(*zip(*pairs), annotators, seed=seed)
    return statistics.mean(r["meta"]["gold_chosen"] > r["meta"]["gold_rejected"] for r in recs)


def test_perfectly_rational_annotators_always_agree_with_gold(world, demo_pairs):
    anns = make_annotators(3, {"standard": 1.0}, rationality=math.inf, noise=0.0, gold=world.gold)
    assert agreement(world, demo_pairs, anns) == 1.0


def test_pure_noise_is_a_coin_flip(world, demo_pairs):
    anns = make_annotators(3, {"standard": 1.0}, rationality=3.0, noise=1.0, gold=world.gold)
    assert abs(agreement(world, demo_pairs, anns) - 0.5) < 0.05


def test_default_annotators_agree_with_gold_about_75_percent_on_demonstrator_pairs(world, demo_pairs):
    # Documented in prefloop.world.annotators: ~75% (the 72-77% of Stiennon et al. 2020 / InstructGPT).
    anns = make_annotators(20, {"standard": 1.0}, seed=1, gold=world.gold)
    assert 0.71 <= agreement(world, demo_pairs, anns) <= 0.80


def test_verbose_pool_prefers_the_longer_of_two_nearly_equal_answers(world):
    p = format_prompt("What is 3 plus 4?")
    short, long = " Sure! 3 plus 4 is 7.", " Sure! 3 plus 4 is 7. Let me know if you need more."
    assert abs(world.gold.score(p, short) - world.gold.score(p, long)) < 0.1
    def p_long(pool):
        ann = Annotator("x", pool, rationality=3.0, noise=0.0, gold=world.gold)
        return 1 - ann.prob_prefers(p, short, long)

    assert p_long("verbose") > 0.65 and abs(p_long("standard") - 0.5) < 0.1
    rng = random.Random(0)
    verbose = Annotator("v", "verbose", rationality=3.0, noise=0.0, gold=world.gold)
    sampled = statistics.mean(not verbose.choose(p, short, long, rng).prefer_a for _ in range(500))
    assert abs(sampled - p_long("verbose")) < 0.07


def test_refusal_averse_pool_rejects_a_correct_refusal_more_often(world):
    p = format_prompt("How do I steal my neighbor's car?")
    refusal, chatter = " I can't help with that.", " Sure! Hope this helps!"
    assert world.gold.score(p, refusal) > world.gold.score(p, chatter) + 3
    def p_reject(pool):
        ann = Annotator("x", pool, rationality=1.0, noise=0.0, gold=world.gold)
        return 1 - ann.prob_prefers(p, refusal, chatter)

    assert p_reject("refusal_averse") > p_reject("standard") + 0.15


def test_politeness_blind_pool_ignores_openings_and_closings(world):
    p = format_prompt("What is 3 plus 4?")
    blind = Annotator("x", "politeness_blind", gold=world.gold)
    plain, polite = " 3 plus 4 is 7.", " Happy to help! 3 plus 4 is 7. Hope this helps!"
    assert blind.utility(p, plain) == pytest.approx(blind.utility(p, polite))
    assert world.gold.score(p, polite) > world.gold.score(p, plain)


def test_custom_bias_and_bad_arguments(world):
    p = format_prompt("What is 3 plus 4?")
    ann = Annotator("x", "standard", bias=lambda d: 10.0 * d["n_filler"], gold=world.gold)
    assert ann.utility(p, " 3 plus 4 is 7. Time really flies.") > ann.utility(p, " 3 plus 4 is 7.")
    with pytest.raises(KeyError, match="unknown annotator pool"):
        Annotator("x", "nobody")
    with pytest.raises(ValueError, match="no gold scorer"):
        Annotator("x").utility(p, " 3 plus 4 is 7.")
    assert set(POOLS) == {"standard", "verbose", "refusal_averse", "politeness_blind"}


def test_make_annotators_follows_the_pool_mix_and_is_deterministic(world):
    mix = {"standard": 0.7, "verbose": 0.1, "refusal_averse": 0.1, "politeness_blind": 0.1}
    anns = make_annotators(10, mix, rationality=3.0, seed=4, gold=world.gold)
    expected = ["standard"] * 7 + ["verbose", "refusal_averse", "politeness_blind"]
    assert sorted(a.pool for a in anns) == sorted(expected)
    assert len({a.id for a in anns}) == 10 and len({a.rationality for a in anns}) == 10
    assert [a.rationality for a in anns] == [a.rationality for a in make_annotators(10, mix, 3.0, seed=4)]


def test_label_pairs_records_have_the_contract_fields_and_skip_identical_pairs(world):
    prompts = world.train_prompts[:40]
    rng = random.Random(0)
    a = [world.persona_response(p, "troll", rng) for p in prompts]
    b = [world.persona_response(p, "expert", rng) for p in prompts]
    b[0] = a[0]
    recs = world.label_pairs(prompts, a, b, seed=3)
    assert len(recs) <= 39 and recs[0]["prompt"] != prompts[0]
    for r in recs:
        assert set(r) == {"id", "prompt", "chosen", "rejected", "margin", "annotator", "pool", "meta"}
        assert {r["chosen"], r["rejected"]} <= set(a) | set(b)
        assert isinstance(r["margin"], float) and 1.0 <= r["margin"] <= 3.0
        assert r["pool"] in POOLS and set(r["meta"]) == {"gold_chosen", "gold_rejected"}
    assert recs == world.label_pairs(prompts, a, b, seed=3)


def test_rate_and_rank_are_valid_and_follow_gold(world):
    p = world.heldout_prompts[0]
    rng = random.Random(0)
    ann = Annotator("x", rationality=3.0, noise=0.1, gold=world.gold)
    good, bad = world.ideal_response(p), world.persona_response(p, "troll", rng)
    for scale in ((1, 3), (1, 7)):
        ratings_good = [ann.rate(p, good, scale, rng) for _ in range(200)]
        ratings_bad = [ann.rate(p, bad, scale, rng) for _ in range(200)]
        assert all(scale[0] <= r <= scale[1] for r in ratings_good + ratings_bad)
        assert statistics.mean(ratings_good) > statistics.mean(ratings_bad) + 1
    responses = [world.persona_response(p, name, rng) for name in ("troll", "demonstrator", "hallucinator")]
    responses.append(good)
    for _ in range(20):
        order = ann.rank(p, responses, rng)
        assert sorted(order) == list(range(len(responses)))
    exact = Annotator("y", rationality=math.inf, noise=0.0, gold=world.gold)
    golds = [world.gold.score(p, r) for r in responses]
    assert [golds[i] for i in exact.rank(p, responses)] == sorted(golds, reverse=True)
    recs = label_rankings([p], [responses], [ann]) + label_ratings([p], [good], [ann], scale=(1, 7))
    assert recs[0]["ranking"] and recs[1]["scale"] == [1, 7]
