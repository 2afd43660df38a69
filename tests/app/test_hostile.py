"""Hostile and broken input: every request gets a deliberate answer (never a 500), with the security headers,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import httpx

from .conftest import ADMIN_PW, login

HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options")


def _project(c: httpx.Client, name: str) -> int:
    r = c.post("/api/projects", json={"name": name, "task_type": "pairwise"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _raw_json(c: httpx.Client, path: str, body: str) -> httpx.Response:
    return c.post(path, content=body.encode(), headers={"content-type": "application/json"})


def test_a_lone_surrogate_is_refused_at_import_naming_the_item(any_server, request):
    with any_server.client("admin") as c:
        pid = _project(c, f"surrogate-{request.node.callspec.id}")
        body = ('{"items": [{"prompt": "fine", "responses": ["a", "b"]}, '
                '{"prompt": "bad \\ud800", "responses": ["a", "b"]}]}')
        r = _raw_json(c, f"/api/projects/{pid}/items", body)
        assert r.status_code == 422 and "lone surrogate" in r.json()["detail"]
        assert "prompt" in r.json()["detail"]
        lines = b'{"prompt": "ok", "responses": ["a", "b"]}\n{"prompt": "x", "responses": ["a \\udfff", "b"]}\n'
        r = c.post(f"/api/projects/{pid}/items", content=lines, headers={"content-type": "application/x-ndjson"})
        assert r.status_code == 422 and r.json()["detail"].startswith("body:2:"), r.text
        # nothing half-imported; an emoji (a surrogate pair in JSON) is a character and fine
        assert c.get(f"/api/projects/{pid}/stats").json()["progress"]["items"] == 0
        ok = '{"items": [{"prompt": "smile \\ud83d\\ude00", "responses": ["a", "b"]}]}'
        assert _raw_json(c, f"/api/projects/{pid}/items", ok).status_code == 201
        export = c.get(f"/api/projects/{pid}/export")
        assert export.status_code == 200


def test_nul_characters_get_a_clear_answer_not_a_500(any_server, request):
    tag = request.node.callspec.id
    with any_server.client("admin") as c:
        r = c.post("/api/projects", json={"name": f"nul\x00{tag}", "task_type": "pairwise"})
        assert r.status_code == 422 and "NUL" in r.json()["detail"]
        pid = _project(c, f"nul-{tag}")
        r = c.post(f"/api/projects/{pid}/items", json={"items": [{"prompt": "p\x00", "responses": ["a", "b"]}]})
        assert r.status_code == 422 and "NUL" in r.json()["detail"]
        r = c.post("/api/users", json={"username": "x", "password": "long-enough-pw", "pool": "p\x00"})
        assert r.status_code == 422
    # the login form, without logging in
    b = httpx.Client(base_url=any_server.url, follow_redirects=False)
    token = b.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    r = b.post("/login", data={"username": "adm\x00in", "password": "x\x00", "csrf_token": token})
    assert r.status_code == 401 and all(h in r.headers for h in HEADERS)


def test_out_of_range_ids_and_long_upload_names(any_server, request):
    with any_server.client("admin") as c:
        for path in (f"/api/projects/{2 ** 70}", f"/api/projects/{2 ** 70}/export", f"/api/assignments/{2 ** 64}"):
            r = c.get(path)
            assert r.status_code == 404 and all(h in r.headers for h in HEADERS), (path, r.status_code)
        pid = _project(c, f"upload-{request.node.callspec.id}")
    b = login(any_server, "admin", ADMIN_PW)
    assert b.get(f"/projects/{2 ** 70}").status_code in (404, 422)
    name = "x" * 300 + ".jsonl"  # over the 255 bytes a file name may have
    r = b.post(f"/admin/projects/{pid}/import", data={"csrf_token": b.csrf},
               files={"file": (name, b'{"prompt": "p", "responses": ["a", "b"]}\n', "application/x-ndjson")})
    assert r.status_code == 303, r.text


def test_an_unhandled_error_still_carries_the_security_headers():
    from fastapi.testclient import TestClient

    from prefloop.feedback.app import PrefloopApp, SecurityHeaders

    app = PrefloopApp()

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    assert isinstance(app.build_middleware_stack(), SecurityHeaders)
    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert r.status_code == 500 and all(h in r.headers for h in HEADERS)


def test_duplicate_keys_and_identical_responses_are_refused(any_server, request):
    with any_server.client("admin") as c:
        pid = _project(c, f"dup-{request.node.callspec.id}")
        body = '{"items": [{"prompt": "p", "responses": ["good", "bad"], "responses": ["bad", "bad2"]}]}'
        r = _raw_json(c, f"/api/projects/{pid}/items", body)
        assert r.status_code == 422 and "'responses' appears twice" in r.json()["detail"]
        same = {"prompt": "p", "chosen": "same", "rejected": "same"}
        r = c.post(f"/api/projects/{pid}/items", json={"items": [same]})
        assert r.status_code == 422 and "identical" in r.json()["detail"]
        r = _raw_json(c, "/api/projects", '{"name": "a", "name": "b", "task_type": "pairwise"}')
        assert r.status_code == 422


def test_a_gzip_bomb_is_refused_by_the_item_text_limit(server):
    with server.client("admin") as c:
        pid = _project(c, "gzip-bomb")
    line = json.dumps({"prompt": "p" * (3 << 20), "responses": ["a", "b"]}).encode() + b"\n"
    small = gzip.compress(line)
    assert len(small) < 10_000
    b = login(server, "admin", ADMIN_PW)
    r = b.post(f"/admin/projects/{pid}/import", data={"csrf_token": b.csrf},
               files={"file": ("bomb.jsonl.gz", small, "application/gzip")})
    assert r.status_code == 422 and "bomb.jsonl.gz:1" in r.text and "200,000 characters" in r.text


def test_the_decompressed_size_is_capped_while_reading():
    import io

    from prefloop.errors import DataError
    from prefloop.feedback.exchange import ImportLimits, read_item_stream

    class P:
        task_type, config = "pairwise", {"scale": [1, 3]}

    lines = b"".join(json.dumps({"id": i, "prompt": "p" * 100, "responses": ["a", "b"]}).encode() + b"\n"
                     for i in range(100))
    assert len(read_item_stream(io.BytesIO(gzip.compress(lines)), P, "f", ImportLimits(max_bytes=len(lines)))) == 100
    try:
        read_item_stream(io.BytesIO(gzip.compress(lines)), P, "f.gz", ImportLimits(max_bytes=len(lines) - 1))
    except DataError as e:
        assert str(e).startswith("f.gz: more than")
    else:
        raise AssertionError("no error")


def test_forwarded_for_is_ignored_from_clients_that_are_not_trusted_proxies(own_limits_server):
    """A client that sends X-Forwarded-For cannot spread its guesses over invented addresses: the per-address
    limit (4 x 5 failures) still stops it, and the audit log records its real address."""
    srv = own_limits_server
    b = httpx.Client(base_url=srv.url)
    token = b.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    codes = []
    for i in range(22):
        r = b.post("/login", data={"username": f"nobody{i}", "password": "wrong", "csrf_token": token},
                   headers={"x-forwarded-for": f"10.0.{i}.1"})
        codes.append(r.status_code)
    assert codes == [401] * 20 + [429, 429]
    with srv.client("admin") as c:
        failed = [e for e in c.get("/api/audit").json() if e["action"] == "login.failed"]
    assert failed and {e["target"] for e in failed} == {"127.0.0.1"}


def test_client_ip_reads_forwarded_for_only_from_a_trusted_proxy():
    from types import SimpleNamespace

    from prefloop.feedback.auth import client_ip

    def req(peer, xff, trusted):
        headers = SimpleNamespace(getlist=lambda name: [xff] if xff else [])
        state = SimpleNamespace(settings=SimpleNamespace(trusted_proxies=trusted))
        return SimpleNamespace(client=SimpleNamespace(host=peer), headers=headers,
                               app=SimpleNamespace(state=state))

    assert client_ip(req("1.2.3.4", "9.9.9.9", ())) == "1.2.3.4"
    assert client_ip(req("10.0.0.2", "6.6.6.6, 5.5.5.5", ("10.0.0.2",))) == "5.5.5.5"  # the proxy's view
    assert client_ip(req("10.0.0.2", "6.6.6.6, 5.5.5.5, 10.0.0.3", ("10.0.0.2", "10.0.0.3"))) == "5.5.5.5"


def test_get_next_creates_nothing(any_server, request):
    with any_server.client("admin") as c:
        pid = _project(c, f"get-next-{request.node.callspec.id}")
        assert c.post(f"/api/projects/{pid}/members", json={"username": "ann1"}).status_code == 200
        c.post(f"/api/projects/{pid}/items", json={"items": [{"prompt": "p", "responses": ["a", "b"]}]})
    with any_server.client("ann1") as c:
        assert c.get(f"/api/projects/{pid}/next").json() == {"assignment": None}
        assert c.get(f"/api/projects/{pid}/next").json() == {"assignment": None}
        made = c.post(f"/api/projects/{pid}/next").json()["assignment"]
        assert made is not None and c.get(f"/api/projects/{pid}/next").json()["assignment"] == made


def test_no_docs_page_and_nothing_from_a_cdn(server):
    r = httpx.get(server.url + "/docs")
    assert r.status_code == 404
    assert "cdn" not in r.headers["content-security-policy"]
    assert httpx.get(server.url + "/openapi.json").status_code == 200


def test_the_feedback_cli_and_app_never_import_torch(tmp_path):
    code = ("import sys; from prefloop.feedback.cli import main; "
            f"assert main(['init', '--db', {str(tmp_path / 'f.db')!r}]) == 0; "
            "from prefloop.feedback import app, api, ui, exchange; import prefloop.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_serve_without_a_secret_key_on_postgresql_is_a_clear_error(monkeypatch, capsys):
    from prefloop.feedback.cli import main

    monkeypatch.delenv("PREFLOOP_SECRET_KEY", raising=False)
    code = main(["serve", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no secret key: set PREFLOOP_SECRET_KEY") and "Traceback" not in err


def test_import_files_name_the_line_of_a_duplicate_key_or_a_surrogate(tmp_path):
    import pytest

    from prefloop.errors import DataError
    from prefloop.feedback.exchange import read_items

    class P:
        task_type, config = "pairwise", {"scale": [1, 3]}

    ok = '{"prompt": "p", "responses": ["a", "b"]}\n'
    for bad, message in (('{"prompt": "p", "chosen": "a", "rejected": "b", "chosen": "b"}', "'chosen' appears twice"),
                         ('{"prompt": "p", "responses": ["\\ud800", "b"]}', "lone surrogate"),
                         ('{"prompt": "p\\u0000", "responses": ["a", "b"]}', "NUL character")):
        path = tmp_path / "items.jsonl"
        path.write_text(ok + ok.replace('"p"', '"q"') + bad + "\n")
        with pytest.raises(DataError) as e:
            read_items(path, P)
        assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value)
