"""The dashboard's numbers: agreement statistics over the app's labels equal the `agreement` functions on the
same labels worked by hand, per project and per pool, with gold and majority agreement per annotator; the
automatic flags (too fast, wrong on gold, always one side) and the per-annotator page."""

from __future__ import annotations

import pytest

from prefloop.feedback import agreement as ag

from .conftest import ADMIN_PW, login, make_project

# 4 items rated 1-3 by three annotators; ann3 (pool verbose) disagrees on items 1 and 3
RATINGS = {"ann1": [3, 1, 2, 3], "ann2": [3, 1, 2, 2], "ann3": [2, 1, 3, 3]}


def test_rating_dashboard_matches_the_agreement_functions(server):
    items = [{"id": f"i{k}", "prompt": f"prompt {k}", "response": f"response {k}"} for k in range(4)]
    items.append({"id": "gold", "prompt": "gold prompt", "response": "gold response", "gold": {"rating": 3}})
    pid = make_project(server, "dash", "rating", items, members=list(RATINGS), overlap=3, gold_rate=0.99)
    for name, ratings in RATINGS.items():
        with server.client(name) as c:
            k = 0
            while (v := c.post(f"/api/projects/{pid}/next").json()["assignment"]) is not None:
                is_gold = v["prompt"] == "gold prompt"
                value = 3 if is_gold and name != "ann3" else 1 if is_gold else ratings[int(v["prompt"][-1])]
                r = c.post(f"/api/assignments/{v['assignment_id']}/judgment",
                           json={"submission_id": f"{name}-dash-{k}", "value": {"rating": value}, "duration_ms": 1000})
                assert r.status_code == 200
                k += 1
    with server.client("admin") as c:
        stats = c.get(f"/api/projects/{pid}/stats").json()
    units = [[RATINGS[n][k] for n in RATINGS] for k in range(4)]
    agr = stats["agreement"]
    # hand check: pairs agreeing per item 1, 3, 1, 1 of 3 -> 6 / 12
    assert agr["raw_agreement"] == pytest.approx(0.5) == pytest.approx(ag.raw_agreement(units))
    assert agr["fleiss_kappa"] == pytest.approx(ag.fleiss_kappa(units), abs=1e-4)
    for level in ("nominal", "ordinal", "interval"):
        assert agr[f"krippendorff_alpha_{level}"] == pytest.approx(ag.krippendorff_alpha(units, level), abs=1e-4)
    assert stats["progress"] == {"items": 4, "gold_items": 1, "target_judgments": 12, "judgments": 12,
                                 "complete_items": 4, "percent": 100.0, "available_items": 0, "skips": 0}
    assert stats["time"]["median_s"] == 1.0
    rows = {r["annotator"]: r for r in stats["annotators"]}
    assert rows["ann1"]["gold_agreement"] == 1.0 and rows["ann3"]["gold_agreement"] == 0.0
    # leave-one-out majority: ann3's others agree on items 0, 1, 2 (ann1 = ann2) -> ann3 matches only item 1
    assert rows["ann3"]["majority_agreement"] == pytest.approx(1 / 3, abs=1e-4)
    assert rows["ann1"]["majority_agreement"] == pytest.approx(1.0)  # others agree on item 1 only: ann1 matches
    pools = stats["pools"]
    assert set(pools) == {"standard", "verbose"} and pools["standard"]["annotators"] == 2
    std_units = [[RATINGS["ann1"][k], RATINGS["ann2"][k]] for k in range(4)]
    assert pools["standard"]["agreement"]["raw_agreement"] == pytest.approx(ag.raw_agreement(std_units))
    assert pools["standard"]["agreement"]["mean_cohen_kappa"] == pytest.approx(
        ag.cohen_kappa(RATINGS["ann1"], RATINGS["ann2"]), abs=1e-4)
    assert pools["verbose"]["gold_agreement"] == 0.0
    page = login(server, "admin", ADMIN_PW).get(f"/admin/projects/{pid}").text
    assert "12 of 12 judgments" in page and "alpha (ordered)</th>" in page and "2plus" not in page
    assert "Items with 2 or more answers</th><td>4</td>" in page
    # 1 s per rating is under the 3 s floor; 4 answers are too few to call "always the same rating"
    assert all([f["code"] for f in r["flags"]] == ["too_fast"] for r in stats["annotators"])


def test_flags_for_too_fast_wrong_on_gold_and_always_one_side(server):
    """ann1 clicks "A is better" on everything in 0.29 s; ann2 takes 6 s, varies its side and picks the worse
    response of every gold item; ann3 takes 6 s and answers like ann2 on regular items but right on gold."""
    n_gold, n_items = 3, 12
    items = [{"id": f"g{k}", "prompt": f"gold {k}", "responses": ["right", "wrong"], "gold": {"preferred": 0}}
             for k in range(n_gold)]
    items += [{"id": f"i{k}", "prompt": f"item {k}", "responses": [f"x{k}", f"y{k}"]} for k in range(n_items)]
    pid = make_project(server, "flags", "pairwise", items, members=["ann1", "ann2", "ann3"], overlap=3,
                       gold_rate=0.99)
    for name in ("ann1", "ann2", "ann3"):
        with server.client(name) as c:
            k = 0
            while (v := c.post(f"/api/projects/{pid}/next").json()["assignment"]) is not None:
                if name == "ann1":
                    choice, ms = 0, 290
                elif v["prompt"].startswith("gold"):
                    choice, ms = v["responses"].index("wrong" if name == "ann2" else "right"), 6000
                else:
                    choice, ms = k % 2, 6000
                r = c.post(f"/api/assignments/{v['assignment_id']}/judgment",
                           json={"submission_id": f"{name}-flag-{k}", "value": {"choice": choice, "strength": 2},
                                 "duration_ms": ms})
                assert r.status_code == 200, r.text
                k += 1
    with server.client("admin") as c:
        rows = {r["annotator"]: r for r in c.get(f"/api/projects/{pid}/stats").json()["annotators"]}
    # (ann1 may also miss gold items: "A" is the gold answer only where the gold response is shown first)
    assert {"too_fast", "one_side"} <= {f["code"] for f in rows["ann1"]["flags"]}
    assert rows["ann1"]["same_side"] == 1.0 and "median 0.29 s" in rows["ann1"]["flags"][0]["detail"]
    assert [f["code"] for f in rows["ann2"]["flags"]] == ["gold"] and rows["ann2"]["gold_agreement"] == 0.0
    assert rows["ann3"]["flags"] == [] and rows["ann3"]["same_side"] == pytest.approx(0.5, abs=0.1)
    admin = login(server, "admin", ADMIN_PW)
    page = admin.get(f"/admin/projects/{pid}").text
    assert '<tr class="flagged">' in page and "too fast: median 0.29 s" in page
    assert f'href="/admin/projects/{pid}/annotators/ann2"' in page
    person = admin.get(f"/admin/projects/{pid}/annotators/ann2").text
    assert "disagrees with gold" in person and person.count(">wrong</td>") == n_gold
    assert person.count("<tr><td>i") == n_items  # every answer listed
    assert admin.get(f"/admin/projects/{pid}/annotators/nobody").status_code == 404
