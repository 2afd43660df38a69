"""Limits an attacker meets before authenticating: request body size (FastAPI parses a JSON or form body before
the handler asks who sent it) and the login rate limit under concurrent attempts.

These tests run their own server, so their failed logins and refused bodies leave the shared one alone."""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import ADMIN_PW, login, seeded_server

MIB = 1 << 20


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    srv = seeded_server(tmp_path_factory, "limits")
    yield srv
    srv.stop()


def raw_request(url: str, head: str, timeout: float = 10.0) -> tuple[int, float]:
    """Send only the request head (no body) and return (status, seconds until the answer)."""
    u = urlsplit(url)
    t0 = time.monotonic()
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(head.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), time.monotonic() - t0


@pytest.mark.parametrize("path", ["/api/projects/1/items", "/admin/projects/1/import", "/api/tokens", "/login"])
def test_a_huge_declared_body_is_refused_before_it_is_read(own_server, path):
    head = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10 ** 10}\r\n\r\n")
    status, seconds = raw_request(own_server.url, head)  # a server waiting for 10 GB would time out here
    # imports authenticate first: an anonymous sender is sent away (401, or the login page) unread
    expected = {"/api/projects/1/items": 401, "/admin/projects/1/import": 303}.get(path, 413)
    assert status == expected and seconds < 5


def test_an_anonymous_63_mib_import_is_refused_before_it_is_read(own_server):
    """63 MiB is under the admins' import limit: before, the server read and parsed it all (3.4 GB) and only
    then said 401; now it answers from the headers alone, and an admin's declared 10 GB is still a 413."""
    head = ("POST /api/projects/1/items HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {63 * MIB}\r\n\r\n")
    assert raw_request(own_server.url, head)[0] == 401
    annotator = f"Authorization: Bearer {own_server.tokens['ann1']}\r\n"
    assert raw_request(own_server.url, head.replace("Host:", annotator + "Host:"))[0] == 413  # not an admin
    admin = f"Authorization: Bearer {own_server.tokens['admin']}\r\n"
    huge = head.replace(str(63 * MIB), str(10 ** 10)).replace("Host:", admin + "Host:")
    assert raw_request(own_server.url, huge)[0] == 413


def test_bodies_over_the_limit_are_refused_without_credentials(own_server):
    with own_server.client() as c:
        r = c.post("/api/tokens", content=b'{"name": "' + b"x" * (3 * MIB) + b'"}',
                   headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = c.post("/login", data={"username": "x" * (3 * MIB), "password": "y", "csrf_token": "z"})
        assert r.status_code == 413

        def chunks():  # no Content-Length: the limit counts what arrives
            for _ in range(12):
                yield b"[" * (MIB // 4)

        r = c.post("/api/tokens", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_imports_may_be_larger_than_other_bodies(own_server):
    with own_server.client("admin") as c:
        pid = c.post("/api/projects", json={"name": "big-import", "task_type": "pairwise"}).json()["id"]
        items = [{"id": f"b{i}", "prompt": "p" * 1000, "responses": ["a" * 1000, "b" * 1000]} for i in range(1200)]
        lines = "".join(json.dumps(it) + "\n" for it in items)  # about 3.6 MB
        r = c.post(f"/api/projects/{pid}/items", content=lines, headers={"content-type": "application/x-ndjson"})
        assert r.status_code == 201 and r.json() == {"imported": 1200}
        # an ordinary request of the same size is not an import
        r = c.post("/api/projects", json={"name": "big", "task_type": "pairwise", "guidelines": "g" * (3 * MIB)})
        assert r.status_code == 413
    b = login(own_server, "admin", ADMIN_PW)
    lines = "".join(f'{{"id": "u{i}", "prompt": "{"p" * 1000}", "responses": ["{"a" * 1000}", "b"]}}\n'
                    for i in range(1500))
    r = b.post(f"/admin/projects/{pid}/import", data={"csrf_token": b.csrf},
               files={"file": ("big.jsonl", lines.encode(), "application/x-ndjson")})
    assert r.status_code == 303, r.text


def test_the_json_form_keeps_the_ordinary_limit_and_names_the_line_form(own_server):
    """`{"items": [...]}` is parsed whole (several times its size in memory), so only the newline-delimited
    form may use the admins' 64 MiB: a 3 MiB JSON-form import is a 413 whose message names that form, sent
    with a Content-Length or streamed, and nothing is imported."""
    items = [{"id": f"j{i}", "prompt": "p" * 1000, "responses": ["a" * 1000, "b" * 1000]} for i in range(1000)]
    body = json.dumps({"items": items}).encode()
    assert len(body) > 2 * MIB
    with own_server.client("admin") as c:
        pid = c.post("/api/projects", json={"name": "json-form-cap", "task_type": "pairwise"}).json()["id"]
        r = c.post(f"/api/projects/{pid}/items", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "application/x-ndjson" in r.json()["detail"]
        r = c.post(f"/api/projects/{pid}/items", content=iter([body[i:i + MIB] for i in range(0, len(body), MIB)]),
                   headers={"content-type": "application/json"})
        assert r.status_code == 413 and "application/x-ndjson" in r.json()["detail"]
        assert c.get(f"/api/projects/{pid}/stats").json()["progress"]["items"] == 0
        r = c.post(f"/api/projects/{pid}/items", json={"items": items[:500]})  # under 2 MiB: as before
        assert r.status_code == 201 and r.json() == {"imported": 500}


def test_concurrent_wrong_passwords_do_not_exceed_the_login_limit(own_server):
    """The limit counts attempts as they start: a burst of parallel guesses gets no more than `login_limit`
    password checks (5 by default), not one per request that passed the check before any had failed."""
    c = httpx.Client(base_url=own_server.url, timeout=60)
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)

    def attempt(i: int) -> int:
        with httpx.Client(base_url=own_server.url, timeout=60) as ci:
            ci.cookies.set("pl_login_csrf", token)
            return ci.post("/login", data={"username": "ann3", "password": f"guess-{i}",
                                           "csrf_token": token}).status_code

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(attempt, range(12)))
    assert codes.count(401) == 5 and codes.count(429) == 7, codes
    login(own_server, "ann1", "annotator-password-1")  # the address itself is not blocked


def test_the_limiter_counts_attempts_and_gives_back_successes():
    from prefloop.feedback.security import RateLimiter

    lim = RateLimiter(3, 60.0)
    assert [lim.take("ip") for _ in range(4)] == [True, True, True, False]
    lim.give_back("ip")  # one of them was a successful login
    assert lim.take("ip") and not lim.take("ip")
    for _ in range(10):  # successes given back never fill the window
        assert lim.take("other")
        lim.give_back("other")
    short = RateLimiter(1, 0.05)
    assert short.take("k") and not short.take("k")
    time.sleep(0.06)
    assert short.take("k")  # the window slides


def test_password_checks_run_a_few_at_a_time(monkeypatch):
    """Each Argon2 check holds 64 MiB: parallel logins (many names, many addresses) must queue for a few
    slots instead of holding one check per server thread at once."""
    import threading

    from prefloop.feedback import security

    running, peak, lock = 0, 0, threading.Lock()

    class SlowHasher:
        def verify(self, password_hash, password):
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.05)
            with lock:
                running -= 1
            return True

    monkeypatch.setattr(security, "_hasher", SlowHasher())
    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(lambda i: security.verify_password("hash", f"pw{i}"), range(16)))
    assert 1 <= peak <= security.PASSWORD_CHECK_SLOTS < 16
