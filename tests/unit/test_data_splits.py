"""The one held-out split (reward, dpo, the loop, the demo): whole prompts, a seeded draw of the prompt set."""

from __future__ import annotations

import random
from types import SimpleNamespace

from prefloop.data.splits import split_by_prompt


def records(n_prompts: int = 20, per_prompt: int = 3) -> list[dict]:
    return [{"prompt": f"User: question {p}?\nAssistant:", "chosen": f"a{k}", "rejected": f"b{k}"}
            for p in range(n_prompts) for k in range(per_prompt)]


def test_whole_prompts_are_held_out_in_the_asked_fraction():
    train, held = split_by_prompt(records(), 0.25, seed=3)
    held_prompts = {r["prompt"] for r in held}
    assert len(held_prompts) == 5 and len(held) == 15  # every record of a held-out prompt
    assert not held_prompts & {r["prompt"] for r in train}
    assert len(train) + len(held) == 60


def test_the_draw_depends_on_the_seed_and_the_prompt_set_not_the_order():
    rows = records()
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    a = {r["prompt"] for r in split_by_prompt(rows, 0.25, seed=3)[1]}
    assert a == {r["prompt"] for r in split_by_prompt(shuffled, 0.25, seed=3)[1]}
    assert a != {r["prompt"] for r in split_by_prompt(rows, 0.25, seed=4)[1]}
    assert a != {r["prompt"] for r in split_by_prompt(rows, 0.25, seed="heldout-3")[1]}  # string seeds too


def test_fraction_zero_holds_nothing_and_a_small_fraction_holds_one_prompt():
    rows = records()
    assert split_by_prompt(rows, 0.0, seed=1) == (rows, [])
    assert len({r["prompt"] for r in split_by_prompt(rows, 0.001, seed=1)[1]}) == 1


def test_record_objects_and_conversational_prompts():
    rows = [SimpleNamespace(prompt=[{"role": "user", "content": f"q{p}"}], chosen="x") for p in range(10)]
    train, held = split_by_prompt(rows, 0.3, seed=0)
    assert len(held) == 3 and len(train) == 7 and all(r in rows for r in held)
