"""The server-rendered pages without a browser: admin forms (with CSRF), file upload import, a posted
annotation form counted once however often it is sent, and the OpenAPI description."""

from __future__ import annotations

import json
import re

from .conftest import ADMIN_PW, ANN_PW, login


def hidden(html: str, name: str) -> str:
    return re.search(rf'name="{name}" value="([^"]*)"', html).group(1)


def test_admin_forms_upload_and_an_idempotent_annotation_form(server, tmp_path):
    admin = login(server, "admin", ADMIN_PW)
    r = admin.post("/admin/users", data={"username": "pageann", "password": "page-password-1", "role": "annotator",
                                         "pool": "night", "csrf_token": admin.csrf})
    assert r.status_code == 303
    assert admin.post("/admin/users", data={"username": "x", "password": "y" * 12}).status_code == 403  # no CSRF
    r = admin.post("/admin/projects", data={"name": "pages", "task_type": "pairwise", "overlap": "1",
                                            "guidelines": "Prefer the correct answer.", "csrf_token": admin.csrf})
    assert r.status_code == 303
    pid = int(r.headers["location"].rsplit("/", 1)[1])
    assert admin.post(f"/admin/projects/{pid}/members",
                      data={"usernames": "pageann, ann1", "csrf_token": admin.csrf}).status_code == 303
    items = tmp_path / "up.jsonl"
    items.write_text(json.dumps({"prompt": "2+2?", "responses": ["4", "5"]}) + "\n")
    r = admin.post(f"/admin/projects/{pid}/import", data={"csrf_token": admin.csrf},
                   files={"file": ("up.jsonl", items.read_bytes(), "application/json")})
    assert r.status_code == 303
    bad = admin.post(f"/admin/projects/{pid}/import", data={"csrf_token": admin.csrf},
                     files={"file": ("bad.jsonl", b'{"prompt": "x", "responses": ["only"]}\n', "application/json")})
    assert bad.status_code == 422 and "bad.jsonl:1: a pairwise item needs exactly 2 responses" in bad.text
    assert "/tmp" not in bad.text  # the server's temporary path is not shown

    ann = login(server, "pageann", "page-password-1")
    page = ann.get(f"/projects/{pid}").text
    assert "Prefer the correct answer." in page and 'data-task="pairwise"' in page
    action = re.search(r'action="(/projects/\d+/assignments/\d+)"', page).group(1)
    form = {"csrf_token": hidden(page, "csrf_token"), "submission_id": hidden(page, "submission_id"), "choice": "2"}
    assert ann.post(action, data=form).status_code == 303
    assert ann.post(action, data=form).status_code == 303  # a double click / reload: the same submission again
    assert ann.post(action, data={**form, "submission_id": "another-submission"}).status_code == 409
    assert ann.post(action, data={**form, "csrf_token": "forged"}).status_code == 403
    assert "Nothing left for you" in ann.get(f"/projects/{pid}").text
    with server.client("admin") as c:
        [rec] = [json.loads(x) for x in c.get(f"/api/projects/{pid}/export").text.splitlines()]
    assert rec["annotator"] == "pageann" and rec["pool"] == "night" and rec["margin"] == 2.0
    # another annotator cannot post to this assignment's form
    other = login(server, "ann1", ANN_PW)
    form_other = {**form, "csrf_token": other.csrf, "submission_id": "other-0001"}
    assert other.post(action, data=form_other).status_code == 404
    dash = admin.get(f"/admin/projects/{pid}").text
    assert "1 of 1 judgments" in dash and "1 of 1 items complete" in dash and "pageann" in dash


def test_openapi_describes_the_api(server):
    with server.client() as c:
        spec = c.get("/openapi.json").json()
        docs = c.get("/docs")
    assert {"/api/projects/{pid}/next", "/api/assignments/{aid}/judgment", "/api/projects/{pid}/export"} <= set(
        spec["paths"])
    assert docs.status_code == 404  # no Swagger UI page: it would load its code from a CDN


def _post_form(client, pid: int, fields: dict) -> tuple[int, str]:
    page = client.get(f"/projects/{pid}").text
    action = re.search(r'action="(/projects/\d+/assignments/\d+)"', page).group(1)
    form = {"csrf_token": hidden(page, "csrf_token"), "submission_id": hidden(page, "submission_id"), **fields}
    r = client.post(action, data=form)
    return r.status_code, page


def test_rating_ranking_and_demonstration_forms(server):
    from .conftest import make_project

    rate = make_project(server, "form-rate", "rating", [{"id": "r", "prompt": "p", "response": "resp"}],
                        members=["ann3"], scale=[1, 5], criteria=["honest"], flags=["made-up fact", "rude"])
    rank = make_project(server, "form-rank", "ranking", [{"id": "k", "prompt": "p", "responses": ["a", "b", "c"]}],
                        members=["ann3"])
    demo = make_project(server, "form-demo", "demonstration", [{"id": "d", "prompt": "write", "response": "draft"}],
                        members=["ann3"])
    c = login(server, "ann3", ANN_PW)
    code, page = _post_form(c, rate, {"rating": "9"})
    assert code == 422 and 'data-key="q"' in page and "made-up fact" in page
    code, _ = _post_form(c, rate, {"rating": "4", "criterion:honest": "5", "flags": ["rude", "made-up fact"]})
    assert code == 303
    code, _ = _post_form(c, rank, {"rank0": "1", "rank1": ""})
    assert code == 422
    code, page = _post_form(c, rank, {"rank0": "2", "rank1": "1", "rank2": "2"})  # positions 0 and 2 tied
    assert code == 303
    shown = re.findall(r'<div class="text">([^<]*)</div>', page)[1:]  # display order of the responses
    code, page = _post_form(c, demo, {"text": "line one\r\nline two"})
    assert code == 303 and ">draft</textarea>" in page
    with server.client("admin") as a:
        rating = json.loads(a.get(f"/api/projects/{rate}/export").text)
        pairs = [json.loads(x) for x in
                 a.get(f"/api/projects/{rank}/export", params={"ties": "keep"}).text.splitlines()]
        demo_rec = json.loads(a.get(f"/api/projects/{demo}/export").text)
    assert rating["rating"] == 4 and rating["meta"]["criteria"] == {"honest": 5}
    assert rating["meta"]["flags"] == ["made-up fact", "rude"]
    wins = sorted((p["chosen"], p["rejected"]) for p in pairs if not p.get("meta", {}).get("tie"))
    ties = [{p["chosen"], p["rejected"]} for p in pairs if p.get("meta", {}).get("tie")]
    assert wins == sorted([(shown[1], shown[0]), (shown[1], shown[2])])  # rank 1 beats both others
    assert ties == [{shown[0], shown[2]}]  # the two ranked 2 tie
    assert demo_rec["completion"] == "line one\nline two" and demo_rec["annotator"] == "ann3"
