"""Gold checks measure each simulated annotator the way gold items do, and unreliable annotators' labels are
dropped before the reward model sees them."""

from __future__ import annotations

import math

import pytest

from prefloop.world import Annotator, WorldConfig, build_world
from prefloop.world.annotators import drop_unreliable, gold_check_agreement


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig.preset("tiny"))


def test_gold_checks_have_a_known_better_reply(world):
    checks = world.gold_checks(30, seed=1)
    assert len(checks) == 30 and checks == world.gold_checks(30, seed=1)
    assert all(world.gold.score(p, good) > world.gold.score(p, bad) for p, good, bad in checks)


def test_agreement_separates_careful_from_random_annotators(world):
    checks = world.gold_checks(60, seed=2)
    careful = Annotator("careful", rationality=math.inf, noise=0.0, gold=world.gold)
    random_ = Annotator("random", noise=1.0, gold=world.gold)
    agree = gold_check_agreement([careful, random_], checks, seed=0)
    assert agree["careful"] == 1.0  # the better reply is shown first or second at random, and always found
    assert 0.3 < agree["random"] < 0.7


def test_drop_unreliable_keeps_unmeasured_and_reliable_annotators():
    records = [{"annotator": a, "id": i} for i, a in enumerate(["good", "bad", "new", "good"])]
    kept, dropped = drop_unreliable(records, {"good": 0.9, "bad": 0.55}, 0.6)
    assert [r["id"] for r in kept] == [0, 2, 3] and [r["id"] for r in dropped] == [1]
    assert drop_unreliable(records, {"bad": 0.55}, 0.0)[1] == []
