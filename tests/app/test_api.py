"""The feedback app's REST API and pages against a real uvicorn process: assignment, judgments, export,
authorisation per object, CSRF, login rate limiting, escaping and the Content Security Policy. Every test
runs on SQLite and on a throwaway PostgreSQL server."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter

import pytest

from prefloop.data.records import Comparison, Ranking, Rating

from .conftest import ADMIN_PW, ANN_PW, ANNOTATORS, login, make_project


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request):
    """The shared SQLite server, or the same app on PostgreSQL."""
    return request.getfixturevalue("sqlite_server" if request.param == "sqlite" else "pg_server")


XSS = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'


def pair_items(n: int, prefix: str = "q") -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": f"User: question {i}?\nAssistant:",
             "responses": [f" good answer {i}.", f" bad answer {i}."], "meta": {"models": ["m-good", "m-bad"]}}
            for i in range(n)]


def drain(c, pid: int, judge) -> list[dict]:
    """Annotate until nothing is left; returns the views seen."""
    seen = []
    while True:
        r = c.post(f"/api/projects/{pid}/next")
        assert r.status_code == 200, r.text
        view = r.json()["assignment"]
        if view is None:
            return seen
        seen.append(view)
        r = c.post(f"/api/assignments/{view['assignment_id']}/judgment",
                   json={"submission_id": uuid.uuid4().hex, "value": judge(view)})
        assert r.status_code == 200, r.text


def prefer_good(view: dict) -> dict:
    return {"choice": 0 if "good" in view["responses"][0] else 1, "strength": 2}


def test_unauthenticated_requests_are_refused(server):
    with server.client() as c:
        for path in ("/api/me", "/api/projects", "/api/users", "/api/audit", "/api/projects/1/export"):
            assert c.get(path).status_code == 401
        assert c.get("/", follow_redirects=False).headers["location"] == "/login"
        assert c.get("/admin").status_code == 303
    with server.client() as c:
        c.headers["authorization"] = "Bearer plt_forged"
        assert c.get("/api/me").status_code == 401


def test_pairwise_assignment_overlap_blind_order_and_export(server):
    pid = make_project(server, "pairs", "pairwise", pair_items(12), overlap=2)
    views = {}
    for name in ANNOTATORS:
        with server.client(name) as c:
            views[name] = drain(c, pid, prefer_good)
    per_item = Counter()
    for vs in views.values():
        prompts = [v["prompt"] for v in vs]
        assert len(prompts) == len(set(prompts)), "an annotator saw an item twice"
        per_item.update(prompts)
        for v in vs:  # blind: no model identity or metadata in what the annotator sees
            assert set(v) == {"assignment_id", "project_id", "task_type", "prompt", "responses", "done"}
    assert len(per_item) == 12 and set(per_item.values()) == {2}
    firsts = Counter(v["responses"][0].startswith(" good") for vs in views.values() for v in vs)
    assert firsts[True] >= 3 and firsts[False] >= 3, "left/right order is not randomised"
    with server.client("admin") as c:
        text = c.get(f"/api/projects/{pid}/export").text
    records = [Comparison.from_json(json.loads(line), f"export:{i}") for i, line in enumerate(text.splitlines(), 1)]
    assert len(records) == 24
    assert all(r.chosen.startswith(" good") and r.margin == 2.0 for r in records)
    assert {(r.annotator, r.pool) for r in records} <= set(ANNOTATORS.items())
    assert all(r.annotator and r.pool for r in records)


def test_gold_items_are_mixed_in_at_the_configured_rate(server):
    items = pair_items(30, "r") + [{**it, "id": f"g{i}", "gold": {"preferred": 0}}
                                   for i, it in enumerate(pair_items(30, "gq"))]
    pid = make_project(server, "gold", "pairwise", items, members=["ann1", "ann2"], overlap=1, gold_rate=0.3)
    with server.client("ann1") as c:
        views = drain(c, pid, lambda v: {"choice": 0 if "good" in v["responses"][0] else 1, "strength": 1})
    with server.client("admin") as c:
        stats = c.get(f"/api/projects/{pid}/stats").json()
    row = {r["annotator"]: r for r in stats["annotators"]}["ann1"]
    # ann1 took every regular item (overlap 1, first to ask) and about 30% gold in between
    assert row["judgments"] == 30 and 5 <= row["gold_judged"] <= 25, row
    assert row["gold_agreement"] == 1.0  # always picked the good answer, which is the gold answer
    assert all(set(v) == set(views[0]) for v in views)  # gold items look like any other item
    with server.client("admin") as c:
        assert len(c.get(f"/api/projects/{pid}/export").text.splitlines()) == 30  # gold left out by default
        with_gold = c.get(f"/api/projects/{pid}/export", params={"include_gold": "true"}).text.splitlines()
    assert len(with_gold) == 30 + row["gold_judged"]


def test_resubmission_is_idempotent_and_conflicts_are_refused(server):
    pid = make_project(server, "idem", "pairwise", pair_items(3, "i"), members=["ann1"])
    with server.client("ann1") as c:
        a = c.post(f"/api/projects/{pid}/next").json()["assignment"]
        body = {"submission_id": "sub-0001-abc", "value": {"choice": 1, "strength": 3}}
        first = c.post(f"/api/assignments/{a['assignment_id']}/judgment", json=body).json()
        again = c.post(f"/api/assignments/{a['assignment_id']}/judgment", json=body).json()
        assert first["duplicate"] is False and again == {**first, "duplicate": True}
        other = c.post(f"/api/assignments/{a['assignment_id']}/judgment",
                       json={"submission_id": "sub-0002-abc", "value": {"choice": 0}})
        assert other.status_code == 409
        b = c.post(f"/api/projects/{pid}/next").json()["assignment"]
        assert b["assignment_id"] != a["assignment_id"]
        reuse = c.post(f"/api/assignments/{b['assignment_id']}/judgment", json=body)
        assert reuse.status_code == 409
        bad = c.post(f"/api/assignments/{b['assignment_id']}/judgment",
                     json={"submission_id": "sub-0003-abc", "value": {"choice": 2}})
        assert bad.status_code == 422 and "choice" in bad.json()["detail"]
    with server.client("admin") as c:
        assert len(c.get(f"/api/projects/{pid}/export").text.splitlines()) == 1


def test_every_request_is_authorised_against_its_object(server):
    pid = make_project(server, "authz", "pairwise", pair_items(4, "z"), members=["ann1", "ann2"], overlap=2)
    with server.client("ann1") as c1, server.client("ann2") as c2, server.client("ann3") as c3:
        a1 = c1.post(f"/api/projects/{pid}/next").json()["assignment"]["assignment_id"]
        # another annotator's assignment does not exist for you, for reading or writing
        assert c2.get(f"/api/assignments/{a1}").status_code == 404
        r = c2.post(f"/api/assignments/{a1}/judgment", json={"submission_id": "steal-0001", "value": {"choice": 0}})
        assert r.status_code == 404
        # a non-member does not see the project, its items or its assignments
        assert c3.get(f"/api/projects/{pid}").status_code == 404
        assert c3.post(f"/api/projects/{pid}/next").status_code == 404
        assert c3.get(f"/api/assignments/{a1}").status_code == 404
        assert pid not in [p["id"] for p in c3.get("/api/projects").json()]
        # annotators reach no admin object
        for c in (c1, c3):
            assert c.get(f"/api/projects/{pid}/export").status_code == 403
            assert c.get(f"/api/projects/{pid}/stats").status_code == 403
            assert c.get("/api/users").status_code == 403
            assert c.get("/api/audit").status_code == 403
            assert c.post("/api/users", json={"username": "evil", "password": "x" * 12,
                                              "role": "admin"}).status_code == 403
            assert c.post("/api/projects", json={"name": "evil", "task_type": "pairwise"}).status_code == 403
            assert c.post(f"/api/projects/{pid}/items", json={"items": pair_items(1, "e")}).status_code == 403
            assert c.post(f"/api/projects/{pid}/members", json={"username": "ann3"}).status_code == 403
            assert c.get(f"/admin/projects/{pid}").status_code == 403
        assert c1.get(f"/api/assignments/{a1}").status_code == 200


def test_cookie_requests_need_the_csrf_token(server):
    c = login(server, "ann1", ANN_PW)
    assert c.get("/api/me").json()["username"] == "ann1"
    assert c.post("/api/tokens", json={"name": "x"}).status_code == 403
    assert c.post("/api/tokens", json={"name": "x"}, headers={"x-csrf-token": "wrong"}).status_code == 403
    assert c.post("/api/tokens", json={"name": "x"}, headers={"x-csrf-token": c.csrf}).status_code == 200
    assert c.post("/logout", data={}).status_code == 403
    assert c.post("/logout", data={"csrf_token": c.csrf}).status_code == 303
    assert c.get("/api/me").status_code == 401  # the session is gone on the server too
    # the login form itself is protected (a cross-site page cannot log a victim into an attacker's account)
    fresh = server.client()
    r = fresh.post("/login", data={"username": "ann1", "password": ANN_PW, "csrf_token": "made-up"})
    assert r.status_code == 403 and "pl_session" not in r.cookies


def test_session_cookie_flags(server):
    c = server.client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"username": "ann2", "password": ANN_PW, "csrf_token": token})
    cookie = r.headers["set-cookie"]
    assert "pl_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie


def test_login_is_rate_limited(server):
    pid_user = "ann4"
    c = server.client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    codes = [c.post("/login", data={"username": pid_user, "password": f"wrong{i}", "csrf_token": token}).status_code
             for i in range(5)]
    assert codes == [401] * 5
    r = c.post("/login", data={"username": pid_user, "password": ANN_PW, "csrf_token": token})
    assert r.status_code == 429 and "pl_session" not in r.cookies  # even the right password waits
    with server.client("admin") as a:
        actions = [e["action"] for e in a.get("/api/audit").json() if e["actor"] == pid_user]
    assert actions.count("login.failed") == 5


def test_untrusted_text_is_escaped_and_pages_carry_a_strict_csp(server):
    items = [{"id": "x", "prompt": [{"role": "user", "content": "hi " + XSS}],
              "responses": [XSS, "plain </div><b>bold</b>"]}]
    pid = make_project(server, "xss", "pairwise", items, members=["ann1"], guidelines="be fair " + XSS)
    c = login(server, "ann1", ANN_PW)
    c.post(f"/projects/{pid}/next", data={"csrf_token": c.csrf})  # the start button (a page view changes nothing)
    r = c.get(f"/projects/{pid}", follow_redirects=True)
    assert r.status_code == 200
    html = r.text
    assert "<script>window.pwned" not in html and "<img src=x" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/app.js" defer>']
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    admin = login(server, "admin", ADMIN_PW)
    dash = admin.get(f"/admin/projects/{pid}").text
    assert "<script>window.pwned" not in dash and "&lt;script&gt;" in dash


def test_ranking_with_ties_exports_pairs_and_rankings(server):
    items = [{"id": f"k{i}", "prompt": f"p{i}", "responses": ["r0", "r1", "r2", "r3"]} for i in range(2)]
    pid = make_project(server, "rank", "ranking", items, members=["ann1"])
    with server.client("ann1") as c:
        v1 = c.post(f"/api/projects/{pid}/next").json()["assignment"]
        pos = {r: i for i, r in enumerate(v1["responses"])}  # display position of each response
        ranks = [0] * 4
        for r, rank in (("r0", 1), ("r1", 2), ("r2", 3), ("r3", 4)):
            ranks[pos[r]] = rank
        assert c.post(f"/api/assignments/{v1['assignment_id']}/judgment",
                      json={"submission_id": "rank-0001", "value": {"ranks": ranks}}).status_code == 200
        v2 = c.post(f"/api/projects/{pid}/next").json()["assignment"]
        pos = {r: i for i, r in enumerate(v2["responses"])}
        ranks = [0] * 4
        for r, rank in (("r0", 1), ("r1", 1), ("r2", 2), ("r3", 3)):  # r0 and r1 tied
            ranks[pos[r]] = rank
        assert c.post(f"/api/assignments/{v2['assignment_id']}/judgment",
                      json={"submission_id": "rank-0002", "value": {"ranks": ranks}}).status_code == 200
    with server.client("admin") as c:
        pairs = [Comparison.from_json(json.loads(x)) for x in c.get(f"/api/projects/{pid}/export").text.splitlines()]
        kept = c.get(f"/api/projects/{pid}/export", params={"ties": "keep"}).text.splitlines()
        rankings = [Ranking.from_json(json.loads(x))
                    for x in c.get(f"/api/projects/{pid}/export", params={"kind": "rankings"}).text.splitlines()]
    assert len(pairs) == 6 + 5 and len(kept) == 12  # C(4,2) pairs each, the tied pair dropped / kept
    assert all(int(p.chosen[1]) < int(p.rejected[1]) for p in pairs)  # r0 > r1 > r2 > r3
    tie = [json.loads(x) for x in kept if json.loads(x).get("meta", {}).get("tie")]
    assert len(tie) == 1 and tie[0]["margin"] == 0.0
    assert len(rankings) == 1 and rankings[0].ranking == [0, 1, 2, 3]  # the tied ranking is not representable


def test_rating_with_criteria_and_flags(server):
    items = [{"id": "t", "prompt": "p", "responses": ["one", "two"]}]
    pid = make_project(server, "rate", "rating", items, members=["ann2"], scale=[1, 7],
                       criteria=["helpful"], flags=["contains a made-up fact"])
    with server.client("ann2") as c:
        views = []
        for k, rating in enumerate((7, 2)):
            v = c.post(f"/api/projects/{pid}/next").json()["assignment"]
            views.append(v)
            assert v["scale"] == [1, 7] and v["flags"] == ["contains a made-up fact"]
            r = c.post(f"/api/assignments/{v['assignment_id']}/judgment",
                       json={"submission_id": f"rate-000{k}", "value": {
                           "rating": rating, "criteria": {"helpful": 5}, "flags": ["contains a made-up fact"]}})
            assert r.status_code == 200
        bad = c.post(f"/api/assignments/{views[0]['assignment_id']}/judgment",
                     json={"submission_id": "rate-0009", "value": {"rating": 8}})
        assert bad.status_code == 409  # already judged (checked before the value)
    with server.client("admin") as c:
        recs = [Rating.from_json(json.loads(x)) for x in c.get(f"/api/projects/{pid}/export").text.splitlines()]
    assert sorted((r.response, r.rating) for r in recs) == [(views[0]["responses"][0], 7),
                                                            (views[1]["responses"][0], 2)]
    assert all(r.scale == (1.0, 7.0) and r.meta["flags"] == ["contains a made-up fact"] for r in recs)


def test_import_errors_name_the_item_and_import_nothing(server):
    with server.client("admin") as c:
        pid = c.post("/api/projects", json={"name": "bad-import", "task_type": "pairwise"}).json()["id"]
        r = c.post(f"/api/projects/{pid}/items", json={"items": [
            {"prompt": "ok", "responses": ["a", "b"]}, {"prompt": "p", "responses": ["only one"]}]})
        assert r.status_code == 422 and r.json()["detail"].startswith("items[1]:")
        assert "exactly 2 responses" in r.json()["detail"]
        r = c.post(f"/api/projects/{pid}/items", json={"items": [{"prompt": 5, "responses": ["a", "b"]}]})
        assert r.status_code == 422 and "prompt" in r.json()["detail"]
        stats = c.get(f"/api/projects/{pid}/stats").json()
    assert stats["progress"]["items"] == 0


def test_admin_actions_are_audited(server):
    pid = make_project(server, "audited", "demonstration", [{"id": "d", "prompt": "write a poem"}],
                       members=["ann3"])
    with server.client("ann3") as c:
        v = c.post(f"/api/projects/{pid}/next").json()["assignment"]
        assert c.post(f"/api/assignments/{v['assignment_id']}/judgment",
                      json={"submission_id": "demo-0001", "value": {"text": "Roses."}}).status_code == 200
    with server.client("admin") as c:
        assert c.get(f"/api/projects/{pid}/export").json()["completion"] == "Roses."
        events = [(e["actor"], e["action"], e["target"]) for e in c.get("/api/audit").json()]
    for action in ("project.create", "project.add_member", "project.import", "project.export"):
        assert ("admin", action, "audited") in events
