"""The feedback app in a real browser (Playwright driving Debian's chromium), every task type end to end with the
keyboard only: log in, start, answer an item, skip the next one with a reason, go back to the answer, edit
it, and export from the dashboard (the export holds the edited answer, not the skipped item). Also: the
browser's Back shows the earlier answer locked (a key press there changes nothing), digits never type into a
rank box after a refused Enter, an XSS payload in an item renders as text, a phone-sized screen fits, and the
admin's dashboard flags a too-fast annotator and edits the guidelines.

Screenshots of every screen are taken on the way; with PREFLOOP_SCREENSHOTS=docs/img they land where the
documentation shows them."""

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
GUIDELINES = ("## How to judge\n\nPrefer the response that is **correct**, then the more *helpful* one.\n\n"
              "- Ignore small typos.\n- If you cannot judge an item, skip it and say why.\n")
DESKTOP = {"width": 1100, "height": 820}

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed (make test installs it: apt-get install chromium)",
                allow_module_level=True)
pytest.importorskip("playwright")
pytest.importorskip("fastapi")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.conftest import ADMIN_PW, ANN_PW, login, seed, start_server  # noqa: E402

ITEMS = {
    "pairwise": [{"id": f"p{k}", "prompt": f"Is {k} + 1 = {k + 1}?", "responses": [f"Yes, {k + 1}.", "No."]}
                 for k in range(2)],
    "ranking": [{"id": f"r{k}", "prompt": f"Name a colour ({k})", "responses": ["Blue.", "Bleu", "A colour."]}
                for k in range(2)],
    "rating": [{"id": f"t{k}", "prompt": f"Explain rain ({k})", "responses": ["Water vapour condenses into drops "
                                                                             "that fall when heavy enough."]}
               for k in range(2)],
    "demonstration": [{"id": f"d{k}", "prompt": f"Write a haiku about tea ({k})", "responses": ["draft"]}
                      for k in range(2)],
}
OPTIONS = {"rating": {"scale": (1, 10), "criteria": ("accurate",), "flags": ("contains a made-up fact",)}}


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("PREFLOOP_SCREENSHOTS")
    path = Path(out) if out else tmp_path_factory.mktemp("screens")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from prefloop.feedback import exchange, service
    from prefloop.feedback.db import Database

    db = tmp_path_factory.mktemp("browser") / "ui.db"
    seed(db)
    d = Database(str(db))
    ids = {}
    projects = {t: (t, items, OPTIONS.get(t, {})) for t, items in ITEMS.items()}
    projects["xss"] = ("pairwise", [{"id": "x", "prompt": [{"role": "user", "content": "Which is kind?"},
                                                           {"role": "assistant", "content": "Ask me."},
                                                           {"role": "user", "content": "Be kind " + XSS}],
                                     "responses": ["Kind reply " + XSS, "Rude reply"]}], {})
    projects["rank42"] = ("ranking", ITEMS["ranking"][:1], {})
    projects["back"] = ("pairwise", ITEMS["pairwise"], {})
    projects["dash"] = ("pairwise", [{"id": f"q{k}", "prompt": f"What is {k} * 2?", "responses": [str(2 * k), "?"]}
                                     for k in range(8)], {})
    with d.write() as s:
        ann = service.user_by_name(s, "ann1")
        for name, (task, items, extra) in projects.items():
            p = service.create_project(s, service.ProjectSpec(name, task, guidelines=GUIDELINES, **extra))
            service.add_member(s, p, ann)
            exchange.import_items(s, p, [{"id": it["id"], "prompt": it["prompt"], "responses": it["responses"],
                                         "gold": None, "meta": None} for it in items])
            ids[name] = p.id
        _history(s, service.project_by_ref(s, "dash"))
        s.commit()
    d.dispose()
    srv = start_server(db)
    yield srv, ids
    srv.stop()


def _history(s, p) -> None:
    """Earlier work in the "dash" project: ann1 answers 4 items in 6 s each, varying sides, and skips one;
    ann2 clicks "A" on 4 items in 0.29 s each."""
    from prefloop.feedback import service

    p.overlap = 2
    for name, ms in (("ann1", 6000), ("ann2", 290)):
        u = service.user_by_name(s, name)
        service.add_member(s, p, u)
        s.flush()
        for k in range(5):
            a = service.next_assignment(s, p, u, b"k" * 32)
            if name == "ann1" and k == 4:
                service.skip_assignment(s, p, a, u, "broken", "the numbers are garbled")
                continue
            service.submit_judgment(s, p, a, u, f"{name}-hist-{k}", {"choice": k % 2 if ms > 1000 else 0},
                                    duration_ms=ms)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def log_in(browser, url: str, username: str, password: str, **context):
    ctx = browser.new_context(**{"viewport": DESKTOP, **context})
    page = ctx.new_page()
    page.goto(url + "/login")
    # the username box takes the focus by itself (autofocus, which may come just after the load event)
    page.wait_for_function("document.activeElement && document.activeElement.name === 'username'")
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    page.wait_for_url(url + "/")
    return page


def ready(page, selector: str) -> None:
    """Wait for `selector` on a page whose keyboard shortcuts are set up (the element can be parsed before)."""
    page.wait_for_selector(f"html[data-keys=ready] {selector}")


def press(page, *keys: str) -> None:
    for k in keys:
        page.keyboard.press(k)


def tab_to(page, selector: str, limit: int = 60) -> None:
    """Press Tab until the focus is inside `selector` (what a keyboard user does)."""
    for _ in range(limit):
        if page.evaluate(f"!!(document.activeElement && document.activeElement.closest({selector!r}))"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


def shown_texts(page) -> list[str]:
    return [t.strip() for t in page.locator("section.response .text").all_inner_texts()]


def mode(page) -> str:
    return page.get_attribute("#task", "data-mode")


def answer(page, task: str, edit: bool) -> dict:
    """Answer the current item by keyboard; returns what the export must then hold."""
    shown = shown_texts(page)
    if task == "pairwise":
        press(page, "7" if edit else "1")  # B much better / A much better
        return {"chosen": shown[1] if edit else shown[0]}
    if task == "ranking":
        if edit:
            press(page, "Backspace", "Backspace", "Backspace", "1", "2", "3", "Enter")
            return {"best_first": shown}
        press(page, "3", "1", "2", "Enter")
        return {"best_first": [shown[2], shown[0], shown[1]]}
    if task == "rating":
        if edit:
            press(page, "0")  # 10, the top of a 1-10 scale
            tab_to(page, "fieldset.criterion")
            press(page, "9", "Enter")
            return {"rating": 10, "criteria": {"accurate": 9}, "flags": ["contains a made-up fact"]}
        press(page, "7", "q", "Enter")
        return {"rating": 7, "criteria": {}, "flags": ["contains a made-up fact"]}
    tab_to(page, "textarea")
    text = "Steam curls upward\nleaves unfold in quiet heat\nthe cup warms my hands" if edit else "Green tea."
    press(page, "Control+a")
    page.keyboard.type(text)
    press(page, "Control+Enter")
    return {"completion": text}


def export(browser, srv, pid: int, kind: str, tmp_path: Path) -> list[dict]:
    admin = log_in(browser, srv.url, "admin", ADMIN_PW)
    admin.goto(f"{srv.url}/admin/projects/{pid}")
    with admin.expect_download() as dl:
        admin.click(f"#export-{kind}")
    path = tmp_path / f"{kind}.jsonl"
    dl.value.save_as(path)
    admin.context.close()
    return [json.loads(x) for x in path.read_text().splitlines()]


def check_export(task: str, records: list[dict], want: dict, skipped_prompt: str) -> None:
    assert all(skipped_prompt not in json.dumps(r) for r in records)  # a skipped item is not exported
    if task == "pairwise":
        [rec] = records
        assert rec["chosen"] == want["chosen"] and rec["margin"] == 3.0 and rec["annotator"] == "ann1"
    elif task == "ranking":
        [rec] = records
        assert [rec["responses"][i] for i in rec["ranking"]] == want["best_first"]
    elif task == "rating":
        [rec] = records
        assert (rec["rating"], rec["meta"]["criteria"], rec["meta"]["flags"]) == (
            want["rating"], want["criteria"], want["flags"])
    else:
        [rec] = records
        assert rec["completion"] == want["completion"]


@pytest.mark.parametrize("task", list(ITEMS))
def test_annotate_skip_edit_and_export_by_keyboard(site, browser, shots, tmp_path, task):
    srv, ids = site
    pid = ids[task]
    page = log_in(browser, srv.url, "ann1", ANN_PW)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{srv.url}/projects/{pid}")
    assert page.locator("#guidelines").get_attribute("open") is not None  # open before the first answer
    assert page.locator("#guidelines h2").inner_text() == "How to judge"  # Markdown rendered
    if task == "pairwise":
        page.screenshot(path=str(shots / "annotate-start.png"))
    press(page, "Enter")
    ready(page, "#task[data-mode=annotate]")
    page.screenshot(path=str(shots / f"annotate-{task}.png"), full_page=True)
    first_url, first_prompt = page.url, page.locator(".prompt .text").inner_text()
    first = answer(page, task, edit=False)
    page.wait_for_url(lambda u: u != first_url)
    ready(page, "#task[data-mode=annotate]")
    assert page.locator("#guidelines").get_attribute("open") is None  # folded away after the first answer

    # skip the second item, with a reason and a note, by keyboard
    if task == "demonstration":
        tab_to(page, "textarea")
        press(page, "Escape")  # leave the text box, so the keys are shortcuts again
    skipped_prompt = page.locator(".prompt .text").inner_text()
    press(page, "s")
    assert page.evaluate("document.activeElement.id") == "skip-reason"
    press(page, "Tab")
    page.keyboard.type("outside what I know")
    if task == "pairwise":
        page.screenshot(path=str(shots / "annotate-skip.png"), full_page=True)
    press(page, "Enter")
    ready(page, "#all-done")

    # back to the answer (B), edit it (E), and save
    press(page, "b")
    page.wait_for_url(first_url)
    assert mode(page) == "review" and page.locator(".prompt .text").inner_text() == first_prompt
    press(page, "e")
    ready(page, "#task[data-mode=edit]")
    if task == "ranking":
        assert [page.input_value(f"select[name=rank{i}]") for i in range(3)] == ["2", "3", "1"]
    if task == "rating":
        assert page.is_checked("input[name=rating][value='7']")
    if task == "pairwise":
        assert page.get_attribute("button.chosen", "data-key") == "1"
    want = answer(page, task, edit=True)
    ready(page, "#saved")
    assert mode(page) == "review" and first != want
    if task == "pairwise":
        page.screenshot(path=str(shots / "annotate-edited.png"))
    assert errors == []
    kind = {"pairwise": "comparisons", "ranking": "rankings", "rating": "ratings"}.get(task, "demonstrations")
    check_export(task, export(browser, srv, pid, kind, tmp_path), want, skipped_prompt)
    page.context.close()


def test_back_shows_the_answer_locked_and_a_key_there_changes_nothing(site, browser):
    srv, ids = site
    page = log_in(browser, srv.url, "ann1", ANN_PW)
    page.goto(f"{srv.url}/projects/{ids['back']}")
    press(page, "Enter")
    ready(page, "#task[data-mode=annotate]")
    first_url, first_prompt = page.url, page.locator(".prompt .text").inner_text()
    press(page, "1")
    page.wait_for_url(lambda u: u != first_url)
    second_url, second_prompt = page.url, page.locator(".prompt .text").inner_text()
    page.go_back()  # the browser's Back: the first item again, with its answer, locked
    assert page.url == first_url and page.locator(".prompt .text").inner_text() == first_prompt
    assert mode(page) == "review" and page.is_disabled("button[data-key='7']")
    press(page, "7")  # used to judge the next item; now nothing happens
    page.wait_for_timeout(300)
    assert page.url == first_url and page.get_attribute("button.chosen", "data-key") == "1"
    page.go_forward()
    assert page.url == second_url and mode(page) == "annotate"
    assert page.locator(".prompt .text").inner_text() == second_prompt
    export = login(srv, "admin", ADMIN_PW).get(f"/api/projects/{ids['back']}/export").text
    [rec] = [json.loads(x) for x in export.splitlines()]
    assert rec["margin"] == 3.0 and rec["prompt"] == first_prompt  # one judgment: the first item's "1"
    page.context.close()


def test_digits_never_type_into_a_rank_box(site, browser):
    """After Enter on an incomplete ranking (a message, no submit), the number keys still rank responses."""
    srv, ids = site
    page = log_in(browser, srv.url, "ann1", ANN_PW)
    page.goto(f"{srv.url}/projects/{ids['rank42']}")
    press(page, "Enter")
    ready(page, "#task[data-mode=annotate]")
    url = page.url
    press(page, "2", "Enter")
    assert page.locator("#form-message").inner_text() == "Rank every response first (1 of 3 ranked)."
    assert page.url == url and page.evaluate("document.activeElement.tagName") == "BODY"
    tab_to(page, "select[name=rank0]")  # even with a rank box focused, a digit ranks, it does not type
    press(page, "4", "3", "1")  # 4 is no response: ignored
    assert [page.input_value(f"select[name=rank{i}]") for i in range(3)] == ["3", "1", "2"]
    press(page, "Enter")
    ready(page, "#all-done")
    page.context.close()


def test_an_xss_item_renders_as_text_on_a_phone(site, browser):
    srv, ids = site
    page = log_in(browser, srv.url, "ann1", ANN_PW, viewport={"width": 390, "height": 844})
    page.goto(f"{srv.url}/projects/{ids['xss']}")
    press(page, "Enter")
    ready(page, "#task[data-mode=annotate]")
    assert XSS in page.locator(".pair").inner_text() and XSS in page.locator(".prompt").inner_text()
    assert page.evaluate("window.pwned") is None and page.locator(".pair img").count() == 0
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # fits a phone
    page.context.close()


def test_dashboard_flags_and_guidelines_edit(site, browser, shots):
    """The admin sees the metrics in words, a flag on the annotator who answered in 0.29 s, that annotator's
    page, the skip reasons, and edits the guidelines, which the annotators then see rendered."""
    srv, ids = site
    pid = ids["dash"]
    admin = log_in(browser, srv.url, "admin", ADMIN_PW)
    admin.goto(f"{srv.url}/admin/projects/{pid}")
    assert "2plus" not in admin.content() and "Items with 2 or more answers" in admin.inner_text("#agreement")
    flagged = admin.locator("#annotators tr.flagged")
    assert flagged.count() == 1 and "ann2" in flagged.inner_text() and "too fast: median 0.29 s" in \
        flagged.inner_text()
    admin.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    admin.click("#annotators a:text('ann1')")
    admin.wait_for_url(f"{srv.url}/admin/projects/{pid}/annotators/ann1")
    assert "the numbers are garbled" in admin.inner_text("#skipped")
    assert admin.locator("#answers tr").count() == 1 + 4
    admin.goto(f"{srv.url}/admin/projects/{pid}/annotators/ann2")
    admin.screenshot(path=str(shots / "annotator.png"), full_page=True)
    admin.goto(f"{srv.url}/admin/projects/{pid}")
    admin.fill("textarea[name=guidelines]", "## New rule\n\nCheck the **arithmetic**.")
    admin.click("#guidelines button[type=submit]")
    admin.wait_for_url(f"{srv.url}/admin/projects/{pid}#guidelines")
    assert admin.inner_text("#guidelines .markdown h2") == "New rule"
    page = log_in(browser, srv.url, "ann1", ANN_PW)
    page.goto(f"{srv.url}/projects/{pid}")  # ann1 has answered before: the guidelines are folded away
    assert page.locator("#guidelines").get_attribute("open") is None
    press(page, "g")
    assert page.locator("#guidelines").get_attribute("open") is not None
    assert page.inner_text("#guidelines strong") == "arithmetic"
    admin.context.close()
    page.context.close()
