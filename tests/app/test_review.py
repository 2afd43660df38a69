"""Findings and checks of the security review of the feedback app (docs/FEEDBACK_APP.md, "Security model"):
upload names, deactivated users, concurrent resubmission, escaping of admin-chosen names, and what errors show."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from prefloop.feedback.cli import main as cli_main

from .conftest import ADMIN_PW, ANN_PW, login, make_project
from .test_pages import open_item

XSS = '"><script>window.pwned=1</script><img src=x onerror=alert(1)>'


@pytest.mark.parametrize("name", [".", "..", "./", "a/.."])
def test_an_upload_with_a_directory_like_name_is_imported_not_a_server_error(server, name):
    """The upload's name became a path inside a temporary directory; "." or ".." named the directory itself."""
    with server.client("admin") as c:
        pid = c.post("/api/projects", json={"name": f"upload-{uuid.uuid4().hex[:8]}",
                                            "task_type": "pairwise"}).json()["id"]
    admin = login(server, "admin", ADMIN_PW)
    r = admin.post(f"/admin/projects/{pid}/import", data={"csrf_token": admin.csrf},
                   files={"file": (name, b'{"prompt": "2+2?", "responses": ["4", "5"]}\n', "application/json")})
    assert r.status_code == 303, r.text
    with server.client("admin") as c:
        assert c.get(f"/api/projects/{pid}/stats").json()["progress"]["items"] == 1


def test_a_deactivated_user_loses_sessions_tokens_and_login(server):
    with server.client("admin") as c:
        assert c.post("/api/users", json={"username": "leaver", "password": "leaver-password-1"}).status_code == 201
        token = c.post("/api/users/leaver/tokens", json={"name": "t"}).json()["token"]
    browser = login(server, "leaver", "leaver-password-1")
    assert browser.get("/api/me").status_code == 200
    assert cli_main(["deactivate", "--db", str(server.db), "--username", "leaver"]) == 0
    assert browser.get("/api/me").status_code == 401
    assert browser.get("/", follow_redirects=False).headers["location"] == "/login"
    with server.client() as c:
        c.headers["authorization"] = f"Bearer {token}"  # never used, so not in the server's token cache
        assert c.get("/api/me").status_code == 401
    fresh = server.client()
    page = fresh.get("/login").text
    csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    r = fresh.post("/login", data={"username": "leaver", "password": "leaver-password-1", "csrf_token": csrf})
    assert r.status_code == 401 and "pl_session" not in r.cookies


def test_concurrent_resubmissions_store_one_judgment(server):
    pid = make_project(server, "race", "pairwise", [{"id": "r0", "prompt": "p", "responses": ["a", "b"]}],
                       members=["ann2"])
    with server.client("ann2") as c:
        aid = c.post(f"/api/projects/{pid}/next").json()["assignment"]["assignment_id"]
    body = {"submission_id": uuid.uuid4().hex, "value": {"choice": 0, "strength": 1}}

    def post(_):
        with server.client("ann2") as c:
            return c.post(f"/api/assignments/{aid}/judgment", json=body)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert all(r.status_code == 200 for r in answers)
    assert len({r.json()["judgment_id"] for r in answers}) == 1
    assert [r.json()["duplicate"] for r in answers].count(False) == 1
    with server.client("admin") as c:
        assert len(c.get(f"/api/projects/{pid}/export").text.splitlines()) == 1


def test_names_chosen_by_admins_are_escaped_in_pages_and_attributes(server):
    with server.client("admin") as c:
        assert c.post("/api/users", json={"username": "poolx", "password": "poolx-password-1",
                                          "pool": XSS[:60]}).status_code == 201
    pid = make_project(server, "names" + uuid.uuid4().hex[:6], "rating",
                       [{"id": "n0", "prompt": "p", "response": "r"}], members=["poolx"],
                       criteria=[XSS], flags=[XSS + "flag"], scale=[1, 3])
    ann = login(server, "poolx", "poolx-password-1")
    page = open_item(ann, pid)
    assert "<script>window.pwned" not in page and "<img src=x" not in page
    assert 'name="criterion:&#34;&gt;&lt;script&gt;' in page  # the attribute stays one quoted value
    form = {"csrf_token": ann.csrf, "submission_id": uuid.uuid4().hex, "rating": "2", f"criterion:{XSS}": "3",
            "flags": XSS + "flag"}
    action = page.split('action="', 2)[2].split('"', 1)[0]  # the first action is the logout form's
    assert ann.post(action, data=form).status_code == 303
    admin = login(server, "admin", ADMIN_PW)
    dash = admin.get(f"/admin/projects/{pid}").text
    assert "<script>window.pwned" not in dash and "&lt;script&gt;window.pwned=1" in dash
    with server.client("admin") as c:
        [rec] = [json.loads(x) for x in c.get(f"/api/projects/{pid}/export").text.splitlines()]
    assert rec["meta"]["criteria"] == {XSS: 3} and rec["meta"]["flags"] == [XSS + "flag"]


def test_errors_show_no_internals_and_are_never_html_from_input(server):
    c = login(server, "ann1", ANN_PW)
    r = c.get("/projects/%3Cscript%3Ealert(1)%3C")  # a non-integer id: a validation error
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json")
    assert r.headers["x-content-type-options"] == "nosniff"
    r = c.post("/api/tokens", content=b'{"name": ' + b"[" * 50_000, headers={"content-type": "application/json",
                                                                              "x-csrf-token": c.csrf})
    assert r.status_code in (400, 422) and "Traceback" not in r.text
    with server.client("ann1") as t:
        r = t.post("/api/projects/999999/next")
        assert r.status_code == 404 and r.json() == {"detail": "project 999999 not found"}
        r = t.post("/api/assignments/999999/judgment", json={"submission_id": "x" * 8, "value": {}})
        assert r.status_code == 404 and "SELECT" not in r.text


def test_odd_annotation_form_values_are_refused_not_a_server_error(server):
    """Form values are checked before use: a digit that `int` cannot read ("²" passes `str.isdigit`) and a file
    where a text field belongs answer 422, like any other bad value, instead of raising inside the handler."""
    pids = {t: make_project(server, f"odd-{t}-{uuid.uuid4().hex[:6]}", t, items, members=["ann2"])
            for t, items in (("ranking", [{"id": "o", "prompt": "p", "responses": ["a", "b", "c"]}]),
                             ("rating", [{"id": "o", "prompt": "p", "response": "a"}]),
                             ("demonstration", [{"id": "o", "prompt": "p"}]))}
    ann = login(server, "ann2", ANN_PW)  # not ann4, whom test_api locks out
    action = {}
    for t, pid in pids.items():
        page = open_item(ann, pid)
        action[t] = page.split('action="', 2)[2].split('"', 1)[0]
    base = {"csrf_token": ann.csrf, "submission_id": uuid.uuid4().hex}
    r = ann.post(action["ranking"], data={**base, "rank0": "\u00b2", "rank1": "1", "rank2": "3"})
    assert r.status_code == 422 and "rank" in r.text
    r = ann.post(action["rating"], data={**base, "rating": "\u00b3"})
    assert r.status_code == 422 and "rating" in r.text
    r = ann.post(action["demonstration"], data=base, files={"text": ("t.txt", b"an answer", "text/plain")})
    assert r.status_code == 422
    r = ann.post(action["rating"], data=base, files={"rating": ("r.txt", b"2", "text/plain")})
    assert r.status_code == 422
    # the assignments are still open and take a proper answer
    assert ann.post(action["ranking"], data={**base, "rank0": "2", "rank1": "1", "rank2": "3"}).status_code == 303


def test_imported_ids_and_meta_fit_the_database(server):
    """An item id longer than its column (255; a rating line adds "#k") and NaN or Infinity in `meta` (not JSON:
    PostgreSQL refuses them and strict readers of the export fail) are refused at import, naming the item."""
    with server.client("admin") as c:
        name = f"fit-{uuid.uuid4().hex[:6]}"
        pid = c.post("/api/projects", json={"name": name, "task_type": "pairwise"}).json()["id"]
        item = {"prompt": "p", "responses": ["a", "b"]}
        r = c.post(f"/api/projects/{pid}/items", json={"items": [item, {**item, "id": "x" * 300}]})
        assert r.status_code == 422 and r.json()["detail"].startswith("items[1]: field 'id'")
        r = c.post(f"/api/projects/{pid}/items", content=b'{"items": [{"prompt": "p", "responses": ["a", "b"], '
                   b'"meta": {"score": NaN}}]}', headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"].startswith("items[0]: field 'meta'")
        assert c.get(f"/api/projects/{pid}/stats").json()["progress"]["items"] == 0
        r = c.post(f"/api/projects/{pid}/items", json={"items": [{**item, "id": "y" * 200, "meta": {"s": 1.5}}]})
        assert r.status_code == 201


def test_the_client_keeps_its_token_out_of_repr():
    """A client printed in a log or an error message must not show the bearer token."""
    from prefloop.feedback.client import FeedbackClient

    c = FeedbackClient("http://127.0.0.1:9", "plt_secret-token-value")
    try:
        assert "plt_secret" not in repr(c) and "http://127.0.0.1:9" in repr(c)
    finally:
        c.close()


def test_sessions_expire_on_the_server_and_tokens_are_stored_hashed(server):
    import hashlib
    import sqlite3

    browser = login(server, "ann3", ANN_PW)
    cookie = browser.cookies["pl_session"]
    with server.client("admin") as c:
        token = c.post("/api/users/ann3/tokens", json={"name": "hash-check"}).json()["token"]
    with sqlite3.connect(server.db) as db:
        stored = [r[0] for r in db.execute("SELECT token_hash FROM sessions")]
        stored += [r[0] for r in db.execute("SELECT token_hash FROM api_tokens")]
        assert cookie not in stored and token not in stored and len(set(stored)) == len(stored)
        assert all(len(h) == 64 for h in stored)  # SHA-256 hex digests
        assert browser.get("/api/me").status_code == 200
        db.execute("UPDATE sessions SET expires_at = '2000-01-01 00:00:00.000000' WHERE token_hash = ?",
                   (hashlib.sha256(cookie.encode()).hexdigest(),))
    db.close()
    assert browser.get("/api/me").status_code == 401  # the cookie's own max-age is not what ends it
    assert browser.get("/", follow_redirects=False).headers["location"] == "/login"
