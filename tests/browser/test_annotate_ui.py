"""The feedback app in a real browser (Playwright driving Debian's chromium): log in, annotate a pairwise item
with the keyboard, a ranking and a rating, then export from the dashboard; an XSS payload inside an imported
response renders as text and runs nothing; the annotation page fits a phone-sized screen."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
XSS = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed (make test / .ci/run install it: apt-get install chromium)",
                allow_module_level=True)
pytest.importorskip("playwright")
pytest.importorskip("fastapi")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.conftest import ADMIN_PW, ANN_PW, seed, start_server  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from prefloop.feedback import exchange, service
    from prefloop.feedback.db import Database

    db = tmp_path_factory.mktemp("browser") / "ui.db"
    seed(db)
    d = Database(str(db))
    ids = {}
    with d.write() as s:
        ann = service.user_by_name(s, "ann1")
        for name, task, items, extra in (
            ("pairs", "pairwise", [{"id": "x", "prompt": [{"role": "user", "content": "Which is kind?"},
                                                          {"role": "assistant", "content": "Ask me."},
                                                          {"role": "user", "content": "Be kind " + XSS}],
                                    "responses": ["Kind reply " + XSS, "Rude reply"]}], {}),
            ("ranks", "ranking", [{"id": "r", "prompt": "Rank these", "responses": ["r-zero", "r-one", "r-two"]}],
             {}),
            ("rates", "rating", [{"id": "t", "prompt": "Rate this", "response": "A long answer. " * 200}],
             {"scale": (1, 5), "flags": ("contains a made-up fact",)}),
        ):
            p = service.create_project(s, service.ProjectSpec(name, task, guidelines="Be careful.", **extra))
            service.add_member(s, p, ann)
            exchange.import_items(s, p, [{"id": it["id"], "prompt": it["prompt"],
                                         "responses": it.get("responses") or [it["response"]],
                                         "gold": None, "meta": None} for it in items])
            ids[name] = p.id
        s.commit()
    d.dispose()
    srv = start_server(db)
    yield srv, ids
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def log_in(browser, url: str, username: str, password: str, **context):
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    page.goto(url + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")
    return page


def test_annotate_with_the_keyboard_then_export(site, browser, tmp_path):
    srv, ids = site
    page = log_in(browser, srv.url, "ann1", ANN_PW, viewport={"width": 390, "height": 844})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # pairwise: the XSS payload is shown as text, nothing ran, and key 1 means "A is much better"
    page.goto(f"{srv.url}/projects/{ids['pairs']}")
    responses = page.locator(".pair .response .text")
    left = responses.nth(0).inner_text()
    assert XSS in page.locator(".pair").inner_text() and XSS in page.locator(".prompt").inner_text()
    assert page.evaluate("window.pwned") is None
    assert page.locator(".pair img").count() == 0
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # fits a phone
    page.keyboard.press("1")
    page.wait_for_selector("#all-done")

    # ranking: press the responses' numbers best first, Enter submits
    page.goto(f"{srv.url}/projects/{ids['ranks']}")
    shown = [page.locator(f"section.response:nth-of-type({i + 2}) .text").inner_text() for i in range(3)]
    best_first = sorted(range(3), key=lambda i: ["r-two", "r-zero", "r-one"].index(shown[i]))
    for i in best_first:
        page.keyboard.press(str(i + 1))
    assert [page.input_value(f"input[name=rank{i}]") for i in best_first] == ["1", "2", "3"]
    page.keyboard.press("Enter")
    page.wait_for_selector("#all-done")

    # rating: key 4 picks the rating, q toggles the first flag, Enter submits
    page.goto(f"{srv.url}/projects/{ids['rates']}")
    page.keyboard.press("4")
    page.keyboard.press("q")
    page.keyboard.press("Enter")
    page.wait_for_selector("#all-done")
    assert errors == []

    # export: the admin downloads the comparisons from the dashboard
    admin = log_in(browser, srv.url, "admin", ADMIN_PW)
    admin.goto(f"{srv.url}/admin/projects/{ids['pairs']}")
    assert "1 of 1 judgments" in admin.inner_text("#progress-text")
    with admin.expect_download() as dl:
        admin.click("#export-comparisons")
    path = tmp_path / "pairs.jsonl"
    dl.value.save_as(path)
    from prefloop.data import read_comparisons

    [rec] = read_comparisons(path)
    assert rec.chosen == left and rec.margin == 3.0 and rec.annotator == "ann1"
    admin.goto(f"{srv.url}/admin/projects/{ids['ranks']}")
    with admin.expect_download() as dl:
        admin.click("#export-rankings")
    dl.value.save_as(tmp_path / "ranks.jsonl")
    ranking = json.loads((tmp_path / "ranks.jsonl").read_text())
    assert [ranking["responses"][i] for i in ranking["ranking"]] == ["r-two", "r-zero", "r-one"]
    admin.goto(f"{srv.url}/admin/projects/{ids['rates']}")
    with admin.expect_download() as dl:
        admin.click("#export-ratings")
    dl.value.save_as(tmp_path / "rates.jsonl")
    rating = json.loads((tmp_path / "rates.jsonl").read_text())
    assert rating["rating"] == 4 and rating["meta"]["flags"] == ["contains a made-up fact"]
