"""`prefloop loop --feedback app --simulate` against a real server: the round's pairs go through the app's REST
API, the world's simulated annotators judge them as the app's users, and the export trains the reward model."""

from __future__ import annotations

import json

import pytest


def test_admins_mint_tokens_for_other_users_and_annotators_cannot(server):
    with server.client("admin") as c:
        r = c.post("/api/users/ann1/tokens", json={"name": "script"})
        assert r.status_code == 201
        token = r.json()["token"]
        assert c.post("/api/users/nobody/tokens", json={}).status_code == 404
        audit = c.get("/api/audit").json()
        assert any(e["action"] == "token.create" and e["target"] == "ann1" and e["actor"] == "admin" for e in audit)
    import httpx

    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"}) as c:
        assert c.get("/api/me").json()["username"] == "ann1"
    with server.client("ann2") as c:
        assert c.post("/api/users/ann1/tokens", json={}).status_code == 403


def test_loop_collects_a_round_through_the_app(server, world_and_policy, tmp_path):
    from prefloop.recipes.loop import Loop, LoopConfig
    from prefloop.recipes.loop_app import project_name

    world, policy = world_and_policy
    cfg = LoopConfig(world=world, policy=str(policy), out=tmp_path / "loop", rounds=1, comparisons=16, rl_steps=1,
                     rollout_batch_size=8, batch_size=8, max_new_tokens=8, max_length=64, rm_epochs=1, rm_batch=8,
                     eval_prompts=4, eval_k=2, heldout_fraction=0.25, feedback="app", app_url=server.url,
                     app_token=server.tokens["admin"], overlap=2, simulate=True, pool_factor=2.0, candidates=3)
    summary = Loop(cfg).run()
    with server.client("admin") as c:
        pid = next(p["id"] for p in c.get("/api/projects").json() if p["name"] == project_name(cfg, 1))
        progress = c.get(f"/api/projects/{pid}/stats").json()["progress"]
    items = [json.loads(x) for x in (cfg.out / "round-1" / "samples.jsonl").read_text().splitlines()]
    candidates = (cfg.out / "round-1" / "candidates.jsonl").read_text().splitlines()
    distinct = sum(len({r.strip() for r in it["responses"]}) == 2
                   and all(r.strip() and "\x00" not in r for r in it["responses"])
                   for it in items)
    # Only the selected pairs (the round's budget of 16 out of more candidates) reach the app, every one
    # comparable, and each was judged by two distinct simulated users.
    assert len(candidates) > distinct == len(items) == 16
    assert progress["items"] == distinct and progress["complete_items"] == distinct
    assert progress["judgments"] == 2 * distinct
    rows = [json.loads(x) for f in ("comparisons_train.jsonl", "comparisons_heldout.jsonl")
            for x in (cfg.out / "round-1" / f).read_text().splitlines()]
    assert rows and all(r["annotator"].startswith("sim-") for r in rows)
    assert {r["pool"] for r in rows} <= {a.pool for a in Loop(cfg).world.annotators}
    assert all({"gold_chosen", "gold_rejected"} <= set(r["meta"]) for r in rows)
    assert all(r["meta"]["chosen_policy"] == r["meta"]["rejected_policy"] == "initial" for r in rows)
    assert summary["rounds"][0]["comparisons_so_far"] > 0

    # A second loop over the same output resumes: the finished round is not imported or annotated again.
    Loop(cfg).run()
    with server.client("admin") as c:
        assert c.get(f"/api/projects/{pid}/stats").json()["progress"]["judgments"] == 2 * distinct


def test_annotators_are_screened_on_the_apps_gold_items(server, world_and_policy, tmp_path):
    from prefloop.recipes.loop import Loop, LoopConfig
    from prefloop.recipes.loop_app import project_name

    world, policy = world_and_policy
    cfg = LoopConfig(world=world, policy=str(policy), out=tmp_path / "screen", rounds=1, comparisons=24,
                     rl_steps=1, rollout_batch_size=8, batch_size=8, max_new_tokens=8, max_length=64, rm_epochs=1,
                     rm_batch=8, eval_prompts=4, eval_k=2, heldout_fraction=0.25, feedback="app",
                     app_url=server.url, app_token=server.tokens["admin"], overlap=2, simulate=True,
                     candidates=3, gold_checks=30, app_gold_rate=0.5, min_annotator_agreement=0.75)
    loop = Loop(cfg)
    flippers = {f"sim-{a.id}" for a in loop.world.annotators[::2]}
    for ann in loop.world.annotators[::2]:
        ann.noise = 1.0  # coin flips: the app's gold items should find them out
    loop.run()
    with server.client("admin") as c:
        pid = next(p["id"] for p in c.get("/api/projects").json() if p["name"] == project_name(cfg, 1))
        stats = c.get(f"/api/projects/{pid}/stats").json()
    assert stats["progress"]["gold_items"] == 30
    fb = loop.state.results["1"]["feedback"]
    agreement = fb["annotator_check_agreement"]
    dropped = [json.loads(x) for x in (cfg.out / "round-1" / "comparisons_dropped.jsonl").read_text().splitlines()]
    kept = [json.loads(x) for f in ("comparisons_train.jsonl", "comparisons_heldout.jsonl")
            for x in (cfg.out / "round-1" / f).read_text().splitlines()]
    # Each label carries its annotator's agreement as the app measured it; those below 0.75 went, the rest stayed.
    assert all(r["meta"]["annotator_agreement"] == agreement[r["annotator"]] for r in dropped + kept)
    assert dropped and all(agreement[r["annotator"]] < 0.75 for r in dropped)
    assert all(agreement[r["annotator"]] >= 0.75 for r in kept)
    assert len(dropped) == fb["dropped_labels"] and len(dropped) + len(kept) == fb["comparisons"]
    # The coin-flippers agree with gold less often than the others, on average.
    flip = [v for a, v in agreement.items() if a in flippers]
    rest = [v for a, v in agreement.items() if a not in flippers]
    assert flip and rest and sum(flip) / len(flip) < sum(rest) / len(rest)
    assert "gold_accuracy_unscreened" in loop.state.results["1"]["reward"]


def test_app_agreement_prefers_enough_gold_items_then_peers():
    from prefloop.recipes.loop_app import annotator_agreement

    rows = [{"annotator": "a", "gold_agreement": 0.9, "gold_judged": 5, "peer_agreement": 0.4},
            {"annotator": "b", "gold_agreement": 0.2, "gold_judged": 4, "peer_agreement": 0.7},
            {"annotator": "c", "gold_agreement": None, "gold_judged": 0, "peer_agreement": None}]
    assert annotator_agreement(rows) == {"a": (0.9, "gold"), "b": (0.7, "peers")}
    assert annotator_agreement(rows, min_gold=4)["b"] == (0.2, "gold")


def test_the_loop_refills_the_queue_in_portions_while_annotators_work(server, world_and_policy, tmp_path,
                                                                     monkeypatch):
    from prefloop.recipes import loop_app
    from prefloop.recipes.loop import Loop, LoopConfig

    world, policy = world_and_policy
    cfg = LoopConfig(world=world, policy=str(policy), out=tmp_path / "refill", rounds=1, comparisons=16,
                     rl_steps=1, rollout_batch_size=8, batch_size=8, max_new_tokens=8, max_length=64, rm_epochs=1,
                     rm_batch=8, eval_prompts=4, eval_k=2, heldout_fraction=0.25, feedback="app",
                     app_url=server.url, app_token=server.tokens["admin"], overlap=2, simulate=True,
                     pool_factor=2.0, candidates=3, app_refill_below=3, app_refill_portion=4)
    imports = []  # (items in the project, judgments so far, pairs imported now, items left to hand out)
    real_import = loop_app.import_rows

    def watched(admin, pid, rows):
        progress = admin._request("GET", f"/api/projects/{pid}/stats").json()["progress"]
        imports.append((progress["items"], progress["judgments"], len(rows), progress["available_items"]))
        return real_import(admin, pid, rows)

    monkeypatch.setattr(loop_app, "import_rows", watched)
    Loop(cfg).run()
    with server.client("admin") as c:
        pid = next(p["id"] for p in c.get("/api/projects").json() if p["name"] == loop_app.project_name(cfg, 1))
        progress = c.get(f"/api/projects/{pid}/stats").json()["progress"]
    # The budget's 16 pairs went in as four portions of 4, each after the annotators had judged part of the
    # previous ones and before the queue ran dry (fewer than 3 items, but some, left to hand out); every pair
    # was judged twice, as without refilling.
    assert [(items, n) for items, _, n, _ in imports] == [(0, 4), (4, 4), (8, 4), (12, 4)]
    judged = [j for _, j, _, _ in imports]
    assert judged[0] == 0 and 0 < judged[1] < judged[2] < judged[3] < 2 * 16
    assert all(0 < left < 3 for _, _, _, left in imports[1:]), imports
    assert progress["items"] == progress["complete_items"] == 16 and progress["judgments"] == 2 * 16
    assert len((cfg.out / "round-1" / "comparisons_train.jsonl").read_text().splitlines()) > 0


def test_refilling_imports_the_most_useful_pairs_first():
    from prefloop.recipes.loop_app import app_rows

    items = [{"prompt": f"p{i}", "responses": ["a", "b"], "meta": {"selection": {"usefulness": u}}}
             for i, u in enumerate([0.1, 0.9, 0.5])]
    items.append({"prompt": "same", "responses": ["a", " a"], "meta": {"selection": {"usefulness": 1.0}}})
    assert [r["id"] for r in app_rows(items, 2)] == ["r2-1", "r2-2", "r2-0"]  # an incomparable pair is left out


def test_loop_app_needs_url_and_token(world_and_policy, tmp_path, monkeypatch):
    from prefloop.errors import ConfigError
    from prefloop.recipes.loop import Loop, LoopConfig

    world, policy = world_and_policy
    with pytest.raises(ConfigError, match="--app-refill-below works with --feedback app"):
        Loop(LoopConfig(world=world, policy=str(policy), out=tmp_path / "x", app_refill_below=5))
    with pytest.raises(ConfigError, match="--app-refill-portion at least 1"):
        Loop(LoopConfig(world=world, policy=str(policy), out=tmp_path / "x", feedback="app", app_url="http://x",
                        app_token="t", app_refill_below=5, app_refill_portion=0))
    with pytest.raises(ConfigError, match="missing option --app-url"):
        Loop(LoopConfig(world=world, policy=str(policy), out=tmp_path / "x", feedback="app"))
    monkeypatch.delenv("PREFLOOP_APP_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="missing option --app-token"):
        Loop(LoopConfig(world=world, policy=str(policy), out=tmp_path / "x", feedback="app", app_url="http://x"))
    monkeypatch.setenv("PREFLOOP_APP_TOKEN", "plt_from_env")
    assert Loop(LoopConfig(world=world, policy=str(policy), out=tmp_path / "y", feedback="app", comparisons=30,
                           app_url="http://x")).app_token == "plt_from_env"

