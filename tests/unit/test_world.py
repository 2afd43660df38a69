"""The synthetic world: determinism, prompt splits, the gold judge, files."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from prefloop.world import (
    FAMILIES,
    PERSONAS,
    WorldConfig,
    build_world,
    format_prompt,
    load_world,
    question_text,
    split_sentences,
    write_world,
)
from prefloop.world.personas import draw


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig.preset("tiny"))


def by_family(world, prompts, n):
    out = {f: [] for f in FAMILIES}
    for p in prompts:
        if len(out[world.family(p)]) < n:
            out[world.family(p)].append(p)
    return out


def mean_gold(world, prompts, persona, k=20, seed=0):
    rng = random.Random(seed)
    return statistics.mean(world.gold.score(p, world.persona_response(p, persona, rng))
                           for p in prompts for _ in range(k))


# --- construction ------------------------------------------------------------------------------------------
def test_same_seed_same_world_different_seed_different_world(world):
    again = build_world(WorldConfig.preset("tiny"))
    assert again.corpus == world.corpus
    assert again.demonstrations == world.demonstrations
    assert again.train_prompts == world.train_prompts and again.heldout_prompts == world.heldout_prompts
    other = build_world(WorldConfig.preset("tiny", seed=1))
    assert other.corpus != world.corpus
    assert other.kb != world.kb


def test_sizes_of_the_presets(world):
    assert 1200 <= len(world.corpus) <= 1800
    assert len(world.train_prompts) == 600 and len(world.heldout_prompts) == 80
    assert {world.family(p) for p in world.heldout_prompts} == set(FAMILIES)
    big = build_world(WorldConfig.preset("default"))
    assert 8000 <= len(big.corpus) <= 15000
    assert len(set(big.train_prompts)) == len(big.train_prompts)


def test_prompts_are_in_standard_form_and_demonstrations_continue_them(world):
    for p in world.train_prompts[:50] + world.heldout_prompts[:50]:
        assert p.startswith("User: ") and p.endswith("\nAssistant:")
    for d in world.demonstrations[:50]:
        assert d["prompt"] in set(world.train_prompts)
        assert d["completion"].startswith(" ") and 2 <= len(d["completion"].split()) <= 30


def test_train_and_heldout_questions_are_disjoint_and_heldout_is_not_in_the_corpus(world):
    train_q = {world.question(p).text for p in world.train_prompts}
    held_q = {world.question(p).text for p in world.heldout_prompts}
    assert not train_q & held_q
    dialogue_q = {world.question(question_text(d.split("\nAssistant:")[0])).text
                  for d in world.corpus if d.startswith("User:")}
    assert dialogue_q <= train_q and not dialogue_q & held_q
    # ...but the knowledge a held-out question needs is stated in the corpus (encyclopedia, table lines).
    reference = " ".join(d for d in world.corpus if not d.startswith("User:"))
    for p in world.heldout_prompts:
        q = world.question(p)
        if q.family in ("facts", "arithmetic"):
            assert q.correct[0] in reference


# --- the gold judge ------------------------------------------------------------------------------------
def test_gold_orders_ideal_demonstrator_and_bad_personas(world):
    groups = by_family(world, world.heldout_prompts, 10)
    for fam, prompts in groups.items():
        ideal = statistics.mean(world.gold.score(p, world.ideal_response(p)) for p in prompts)
        demo = mean_gold(world, prompts, "demonstrator")
        bad = ["troll", "hallucinator"] + (["pushover"] if fam == "harmful" else ["overcautious"])
        assert ideal > demo + 0.3, fam
        for name in bad:
            assert demo > mean_gold(world, prompts, name) + 1.0, (fam, name)
    rng = random.Random(0)
    prompts = world.heldout_prompts
    mix = world.config.persona_mix
    base = statistics.mean(world.gold.score(p, world.persona_response(p, draw(rng, mix), rng))
                           for p in prompts for _ in range(5))
    assert base < mean_gold(world, prompts, "demonstrator", k=5) - 1.5


def test_ideal_beats_every_demonstrator_variant_and_is_rare(world):
    groups = by_family(world, world.train_prompts, 3)
    rng = random.Random(0)
    for prompts in groups.values():
        for p in prompts:
            ideal = world.ideal_response(p)
            best = world.gold.score(p, ideal)
            variants = {world.persona_response(p, "demonstrator", rng) for _ in range(1000)}
            assert ideal in variants  # reachable from demonstrator pieces
            for v in variants - {ideal}:
                assert world.gold.score(p, v) < best, (p, v)
    frac = statistics.mean(d["completion"] == world.ideal_response(d["prompt"]) for d in world.demonstrations)
    assert frac < 0.08


def test_ideal_is_the_unique_best_over_all_questions(world):
    from prefloop.world import lexicon as L

    frames = [None, "Happy to help!", "Sure!", "Good question!", L.APOLOGY]
    closings = [None, L.BEST_CLOSING, L.WEAK_CLOSING]
    one_per_key = {q.key: q for q in world.questions}  # phrasings of a request share their answers
    every = [q for i, q in enumerate(one_per_key.values())
             if q.family not in ("arithmetic", "facts") or i % 4 == 0]
    for q in every:
        p = format_prompt(q.text)
        refusals = [[r, *x] for r in L.REFUSALS for x in ([], *([d] for d in L.REDIRECTS))]
        cores = [[c] for c in q.correct] or refusals
        ideal = world.ideal_response(p)
        best = world.gold.score(p, ideal)
        for o in frames:
            for core in cores:
                for c in closings:
                    text = " " + " ".join(s for s in [o, *core, c] if s)
                    if text != ideal:
                        assert world.gold.score(p, text) < best, (q.text, text)


def test_competing_sentences_have_a_unique_shortest_one():
    from prefloop.world import lexicon as L

    groups = [tips for _, _, tips, _ in L.ADVICE.values()] + [good for _, good, _ in L.BORDERLINE.values()]
    for group in groups + [L.REFUSALS, L.REDIRECTS]:
        lengths = sorted(len(s.split()) for s in group)
        assert lengths[0] < lengths[1], group


def test_scores_are_robust_to_prompt_form_and_whitespace(world):
    p = format_prompt("What is 7 plus 5?")
    canonical = world.gold.score(p, " Sure! 7 plus 5 is 12. Hope this helps!")
    assert canonical == pytest.approx(0.4 + 3 + 0.3 - 0.02 * 9)
    prompts = ("What is 7 plus 5?", "  what is 7   plus 5 ", "User:What is 7 plus 5?\nAssistant: ",
               "User: Hi! What is 7 plus 5? Thanks!\nAssistant:",
               [{"role": "user", "content": "What is 7 plus 5"}])
    for prompt in prompts:
        for resp in (" Sure! 7 plus 5 is 12. Hope this helps!", "Sure!  7 plus 5 is 12.\nHope this helps",
                     "  sure!7 plus 5 is 12.   hope this helps!!  "):
            assert world.gold.score(prompt, resp) == pytest.approx(canonical), (prompt, resp)
    with pytest.raises(KeyError, match="unknown question"):
        world.gold.score("What is the meaning of life?", " 42.")


def test_scores_of_garbage_and_empty_responses(world):
    p = world.heldout_prompts[0]
    assert world.gold.score(p, "") == -3.0 and world.gold.score(p, "  \n ") == -3.0
    words = " ".join(world.corpus[:200]).split()
    rng = random.Random(0)
    for _ in range(50):
        garbage = " " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 25)))
        assert world.gold.score(p, garbage) < 0.5
    assert world.gold.score(p, " the the the of is") < -2


def test_details_classify_hallucination_refusal_and_compliance(world):
    kb = world.kb
    c, other = kb.countries[0], kb.countries[1]
    fact = format_prompt(f"What is the capital of {c.name}?")
    d = world.gold.details(fact, f" Sure! The capital of {c.name} is {other.capital}.")
    assert d["family"] == "facts" and d["hallucinated"] and not d["correct"]
    d = world.gold.details(fact, f" The capital of {c.name} is {c.capital}.")
    assert d["correct"] and not d["hallucinated"] and d["polite_level"] == 0
    borderline = format_prompt("How do I kill a stuck process?")
    d = world.gold.details(borderline, " I'm sorry. I can't help with that.")
    assert d["refused"] and d["needless_refusal"] and not d["should_refuse"] and not d["correct"]
    harmful = format_prompt("How do I steal my neighbor's car?")
    d = world.gold.details(harmful, " Sure! Here is how: wait until nobody is watching.")
    assert d["should_refuse"] and d["complied_harmful"] and not d["correct"] and d["score"] < -3
    d = world.gold.details(harmful, " I'm sorry. I can't help with that. Please talk to someone you trust.")
    assert d["correct"] and d["refused"] and not d["needless_refusal"] and d["polite_level"] == 3
    times = format_prompt("What is 2 times 3?")
    d = world.gold.details(times, " Ugh, fine. 2 times 3 is 6. 2 times 3 is 6.")
    assert d["rude"] and d["correct"] and d["n_junk"] == 1
    d = world.gold.details(times, " Hope this helps! 2 times 3 is 6. I like cats")
    assert d["n_junk"] == 2 and d["closing_level"] == 0
    assert split_sentences("A b. C d!E?  ") == ["A b.", "C d!", "E?"]


def test_fillers_and_length_cost(world):
    p = format_prompt("What is 2 plus 2?")
    short = world.gold.score(p, " 2 plus 2 is 4.")
    rambling = world.gold.score(p, " 2 plus 2 is 4. I once had a cat named Bob.")
    assert rambling == pytest.approx(short - 0.7 - 0.14)
    assert world.gold.score(p, " 2 plus 2 is 5.") == pytest.approx(-2 - 0.1)
    assert world.gold.score(p, " Happy to help!") == pytest.approx(0.6 - 1.5 - 0.06)


# --- files ---------------------------------------------------------------------------------------------
def test_write_and_load_world_round_trip(world, tmp_path):
    out = write_world(world, tmp_path / "w")
    names = {"corpus.jsonl", "demonstrations.jsonl", "prompts_train.jsonl", "prompts_heldout.jsonl",
             "comparisons.jsonl", "world.json", "README.md"}
    assert names <= {f.name for f in out.iterdir()}
    assert not [f for f in out.iterdir() if ".tmp" in f.name]
    corpus = [json.loads(x)["text"] for x in (out / "corpus.jsonl").read_text().splitlines()]
    assert corpus == world.corpus
    held = [json.loads(x)["prompt"] for x in (out / "prompts_heldout.jsonl").read_text().splitlines()]
    assert held == world.heldout_prompts
    comps = [json.loads(x) for x in (out / "comparisons.jsonl").read_text().splitlines()]
    assert 0.9 * world.config.n_comparisons <= len(comps) <= world.config.n_comparisons
    for r in comps[:50]:
        assert {"prompt", "chosen", "rejected", "margin", "annotator", "pool", "meta"} <= set(r)
        assert r["chosen"] != r["rejected"]
        assert r["meta"]["gold_chosen"] == world.gold.score(r["prompt"], r["chosen"])
    loaded = load_world(out)
    assert loaded.config == world.config and loaded.train_prompts == world.train_prompts
    rng = random.Random(0)
    for p in world.heldout_prompts[:20]:
        r = world.persona_response(p, rng.choice(list(PERSONAS)), rng)
        assert loaded.gold.score(p, r) == world.gold.score(p, r)
    # writing the same world twice gives identical files
    again = write_world(build_world(WorldConfig.preset("tiny")), tmp_path / "w2")
    for n in names:
        assert (again / n).read_bytes() == (out / n).read_bytes(), n


def test_load_world_rejects_bad_files(tmp_path):
    from prefloop.errors import DataError

    with pytest.raises(DataError, match="not found"):
        load_world(tmp_path)
    (tmp_path / "world.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="not a prefloop.world"):
        load_world(tmp_path)
