"""The server-rendered pages without a browser: admin forms (with CSRF), file upload import, a posted
annotation form counted once however often it is sent, page views that change nothing, skip with a reason,
an annotator's earlier answers (read-only, then edited: export and statistics follow), rendered guidelines,
and the OpenAPI description."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from .conftest import ADMIN_PW, ANN_PW, login, make_project


def hidden(html: str, name: str) -> str:
    return re.search(rf'name="{name}" value="([^"]*)"', html).group(1)


def open_item(client, pid: int) -> str:
    """The annotation page of the user's current item; with none open, the start button makes one (POST)."""
    r = client.get(f"/projects/{pid}")
    if r.status_code == 200:
        r = client.post(f"/projects/{pid}/next", data={"csrf_token": client.csrf})
    assert r.status_code == 303, r.text
    return client.get(r.headers["location"]).text


def task_action(page: str) -> str:
    return re.search(r'action="(/projects/\d+/assignments/\d+(?:/edit)?)" id="task"', page).group(1)


def n_assignments(server, pid: int) -> int:
    with sqlite3.connect(server.db) as conn:
        return conn.execute("SELECT count(*) FROM assignments WHERE project_id = ?", (pid,)).fetchone()[0]


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
    page = open_item(ann, pid)
    assert "Prefer the correct answer." in page and 'data-task="pairwise"' in page
    action = task_action(page)
    form = {"csrf_token": hidden(page, "csrf_token"), "submission_id": hidden(page, "submission_id"), "choice": "2"}
    r = ann.post(action, data=form)
    assert r.status_code == 303 and r.headers["location"] == f"/projects/{pid}"  # nothing left to go on to
    assert ann.post(action, data=form).status_code == 303  # a double click / reload: the same submission again
    assert ann.post(action, data={**form, "submission_id": "another-submission"}).status_code == 409
    assert ann.post(action, data={**form, "csrf_token": "forged"}).status_code == 403
    assert "Nothing left for you" in ann.get(f"/projects/{pid}").text
    with server.client("admin") as c:
        [rec] = [json.loads(x) for x in c.get(f"/api/projects/{pid}/export").text.splitlines()]
    assert rec["annotator"] == "pageann" and rec["pool"] == "night" and rec["margin"] == 2.0
    # another annotator cannot post to this assignment's form, nor see it
    other = login(server, "ann1", ANN_PW)
    form_other = {**form, "csrf_token": other.csrf, "submission_id": "other-0001"}
    assert other.post(action, data=form_other).status_code == 404
    assert other.get(action).status_code == 303  # not theirs: sent to their own current item
    dash = admin.get(f"/admin/projects/{pid}").text
    assert "1 of 1 judgments" in dash and "1 of 1 items complete" in dash and "pageann" in dash


def test_page_views_change_nothing_and_back_shows_the_answer_read_only(server):
    """GET creates no assignment; after an answer, the previous page's URL (the browser's Back) shows that
    answer, locked, instead of a form that would judge the next item."""
    pid = make_project(server, "views", "pairwise", [{"id": f"v{k}", "prompt": f"p{k}", "responses": ["a", "b"]}
                                                    for k in range(2)], members=["ann1"])
    ann = login(server, "ann1", ANN_PW)
    for _ in range(3):
        start = ann.get(f"/projects/{pid}")
        assert start.status_code == 200 and 'id="start"' in start.text
    assert n_assignments(server, pid) == 0
    assert ann.get(f"/projects/{pid}/next").status_code == 405  # only a POST starts
    page = open_item(ann, pid)
    assert n_assignments(server, pid) == 1
    first = task_action(page)
    r = ann.get(f"/projects/{pid}")
    assert r.status_code == 303 and r.headers["location"] == first  # the open item, not a new one
    r = ann.post(first, data={"csrf_token": ann.csrf, "submission_id": hidden(page, "submission_id"), "choice": "1"})
    second = r.headers["location"]
    assert second != first and n_assignments(server, pid) == 2
    back = ann.get(first).text  # what Back shows
    assert 'data-mode="review"' in back and '<fieldset class="plain" disabled>' in back
    assert 'name="submission_id"' not in back and 'class="chosen" aria-pressed="true">A is much better' in back
    assert f'id="previous" href="{first}"' in ann.get(second).text
    assert n_assignments(server, pid) == 2  # none of these views made an assignment


def test_skip_with_a_reason_passes_the_item_on(server):
    pid = make_project(server, "skips", "pairwise", [{"id": f"s{k}", "prompt": f"p{k}", "responses": ["a", "b"]}
                                                    for k in range(2)], members=["ann1", "ann2"])
    ann = login(server, "ann1", ANN_PW)
    page = open_item(ann, pid)
    skip = task_action(page) + "/skip"
    assert 'action="' + skip + '"' in page
    assert ann.post(skip, data={"csrf_token": ann.csrf, "reason": "other"}).status_code == 422  # why?
    assert ann.post(skip, data={"csrf_token": ann.csrf, "reason": "bored"}).status_code == 422
    assert ann.post(skip, data={"csrf_token": "forged", "reason": "unsure"}).status_code == 403
    r = ann.post(skip, data={"csrf_token": ann.csrf, "reason": "other", "note": "in a language\nI do not read"})
    assert r.status_code == 303 and r.headers["location"] != task_action(page)  # on to the next item
    assert ann.post(skip, data={"csrf_token": ann.csrf, "reason": "unsure"}).status_code == 409
    assert "You skipped this item: Other reason: in a language I do not read." in ann.get(task_action(page)).text
    skipped_prompt = re.search(r'<div class="text">(p\d)</div>', page).group(1)
    # the skipped item goes to someone else (overlap 1), and never back to ann1
    other = login(server, "ann2", ANN_PW)
    assert f'<div class="text">{skipped_prompt}</div>' in open_item(other, pid)
    nxt = ann.get(r.headers["location"]).text
    assert f'<div class="text">{skipped_prompt}</div>' not in nxt
    with server.client("admin") as c:
        stats = c.get(f"/api/projects/{pid}/stats").json()
    assert stats["progress"]["skips"] == 1 and {r["annotator"]: r["skips"] for r in stats["annotators"]} == {"ann1": 1}
    person = login(server, "admin", ADMIN_PW).get(f"/admin/projects/{pid}/annotators/ann1").text
    assert "Other reason: in a language I do not read" in person


def test_edit_an_earlier_answer_changes_export_and_statistics(server):
    pid = make_project(server, "edits", "pairwise", [{"id": "e0", "prompt": "p", "responses": ["good", "bad"]}],
                       members=["ann1", "ann2"], overlap=2)
    answers = {}
    for name in ("ann1", "ann2"):
        c = login(server, name, ANN_PW)
        page = open_item(c, pid)
        good_pos = 0 if page.index(">good<") < page.index(">bad<") else 1
        key = "1" if good_pos == 0 else "7"  # both prefer "good", strongly
        c.post(task_action(page), data={"csrf_token": c.csrf, "submission_id": hidden(page, "submission_id"),
                                        "choice": key})
        answers[name] = (c, task_action(page), good_pos)
    with server.client("admin") as a:
        assert a.get(f"/api/projects/{pid}/stats").json()["agreement"]["raw_agreement"] == 1.0
    c, url, good_pos = answers["ann1"]
    edit_page = c.get(url + "?edit=1").text
    assert 'data-mode="edit"' in edit_page and f'action="{url}/edit"' in edit_page
    flip = "7" if good_pos == 0 else "1"  # now "bad" is much better
    assert c.post(url + "/edit", data={"csrf_token": "forged", "choice": flip}).status_code == 403
    other = answers["ann2"][0]
    assert other.post(url + "/edit", data={"csrf_token": other.csrf, "choice": flip}).status_code == 404
    r = c.post(url + "/edit", data={"csrf_token": c.csrf, "choice": flip})
    assert r.status_code == 303 and r.headers["location"] == url + "?saved=1"
    saved = c.get(r.headers["location"]).text
    assert 'id="saved"' in saved and "(edited)" in saved
    with server.client("admin") as a:
        recs = [json.loads(x) for x in a.get(f"/api/projects/{pid}/export").text.splitlines()]
        stats = a.get(f"/api/projects/{pid}/stats").json()
        audit = a.get("/api/audit").json()
    assert {(r["annotator"], r["chosen"]) for r in recs} == {("ann1", "bad"), ("ann2", "good")}
    assert stats["agreement"]["raw_agreement"] == 0.0  # the statistics use the latest answer
    [event] = [e for e in audit if e["action"] == "judgment.edit" and e["target"] == "edits"]
    assert event["actor"] == "ann1" and event["detail"]["before"]["preferred"] == 0  # the earlier answer kept
    # an open assignment is answered, not edited
    page = open_item(login(server, "ann3", ANN_PW), make_project(
        server, "edits-open", "pairwise", [{"id": "o", "prompt": "p", "responses": ["a", "b"]}], members=["ann3"]))
    ann3 = login(server, "ann3", ANN_PW)
    assert ann3.post(task_action(page) + "/edit", data={"csrf_token": ann3.csrf, "choice": "1"}).status_code == 409


def test_guidelines_render_as_sanitised_markdown_and_the_admin_edits_them(server):
    pid = make_project(server, "rules", "pairwise", [{"id": f"g{k}", "prompt": "p", "responses": ["a", "b"]}
                                                    for k in range(2)], members=["ann1"])
    admin = login(server, "admin", ADMIN_PW)
    md = ("# Rules\n\nPrefer **correct** answers.\n\n- short\n- kind\n\n<script>window.pwned=1</script>\n\n"
          "[evil](javascript:alert(1)) [ok](https://example.org/guide)")
    r = admin.post(f"/admin/projects/{pid}/guidelines", data={"csrf_token": admin.csrf, "guidelines": md})
    assert r.status_code == 303
    assert admin.post(f"/admin/projects/{pid}/guidelines", data={"csrf_token": "x", "guidelines": ""}
                      ).status_code == 403
    ann = login(server, "ann1", ANN_PW)
    start = ann.get(f"/projects/{pid}").text
    assert '<details class="guidelines" id="guidelines" open>' in start  # open before the first answer
    assert "<h1>Rules</h1>" in start and "<strong>correct</strong>" in start and "<li>kind</li>" in start
    assert "<script>window" not in start and "&lt;script&gt;window.pwned" in start  # raw HTML shows as text
    assert 'href="javascript' not in start
    assert 'href="https://example.org/guide" rel="noopener noreferrer nofollow"' in start
    page = open_item(ann, pid)
    ann.post(task_action(page), data={"csrf_token": ann.csrf, "submission_id": hidden(page, "submission_id"),
                                      "choice": "4"})
    later = open_item(ann, pid)
    assert '<details class="guidelines" id="guidelines">' in later  # folded away once the annotator has begun
    assert "<textarea name=\"guidelines\"" in admin.get(f"/admin/projects/{pid}").text


@pytest.mark.parametrize(("lo", "hi", "keys"), [(1, 10, "1234567890"), (1, 5, "12345"),
                                                (0, 10, "1234567890-"), (-2, 2, "12345")])
def test_every_rating_value_has_a_key(lo, hi, keys):
    from prefloop.feedback.ui import scale_keys

    assert [v for v, _ in scale_keys(lo, hi)] == list(range(lo, hi + 1))
    assert "".join(k for _, k in scale_keys(lo, hi)) == keys


def test_openapi_describes_the_api(server):
    with server.client() as c:
        spec = c.get("/openapi.json").json()
        docs = c.get("/docs")
    assert {"/api/projects/{pid}/next", "/api/assignments/{aid}/judgment", "/api/projects/{pid}/export"} <= set(
        spec["paths"])
    assert docs.status_code == 404  # no Swagger UI page: it would load its code from a CDN


def _post_form(client, pid: int, fields: dict) -> tuple[int, str]:
    page = open_item(client, pid)
    form = {"csrf_token": hidden(page, "csrf_token"), "submission_id": hidden(page, "submission_id"), **fields}
    r = client.post(task_action(page), data=form)
    return r.status_code, page


def test_rating_ranking_and_demonstration_forms(server):
    rate = make_project(server, "form-rate", "rating", [{"id": "r", "prompt": "p", "response": "resp"}],
                        members=["ann3"], scale=[1, 10], criteria=["honest"], flags=["made-up fact", "rude"])
    rank = make_project(server, "form-rank", "ranking", [{"id": "k", "prompt": "p", "responses": ["a", "b", "c"]}],
                        members=["ann3"])
    demo = make_project(server, "form-demo", "demonstration", [{"id": "d", "prompt": "write", "response": "draft"}],
                        members=["ann3"])
    c = login(server, "ann3", ANN_PW)
    code, page = _post_form(c, rate, {"rating": "11"})
    assert code == 422 and 'data-key="q"' in page and "made-up fact" in page
    assert 'value="10" data-key="0"' in page  # 10 is reachable by a key
    code, _ = _post_form(c, rate, {"rating": "10", "criterion:honest": "5", "flags": ["rude", "made-up fact"]})
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
    assert rating["rating"] == 10 and rating["meta"]["criteria"] == {"honest": 5}
    assert rating["meta"]["flags"] == ["made-up fact", "rude"]
    wins = sorted((p["chosen"], p["rejected"]) for p in pairs if not p.get("meta", {}).get("tie"))
    ties = [{p["chosen"], p["rejected"]} for p in pairs if p.get("meta", {}).get("tie")]
    assert wins == sorted([(shown[1], shown[0]), (shown[1], shown[2])])  # rank 1 beats both others
    assert ties == [{shown[0], shown[2]}]  # the two ranked 2 tie
    assert demo_rec["completion"] == "line one\nline two" and demo_rec["annotator"] == "ann3"


def test_the_sanitizer_removes_what_markdown_lets_through():
    """Markdown allows data: images; the sanitizer's allow-list of URL schemes drops them (and anything else
    the Markdown layer might let through), keeping the text."""
    from prefloop.feedback.ui import guidelines_html

    html = str(guidelines_html("See ![pixel](data:image/png;base64,iVBORw0KGgo=) and [docs](https://example.org)"))
    assert "data:" not in html and 'href="https://example.org"' in html and "<img" in html
