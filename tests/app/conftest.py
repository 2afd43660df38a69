"""Fixtures of the feedback app tests: a seeded database and a real uvicorn process on a free loopback port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

ADMIN_PW = "admin-password-1"
ANN_PW = "annotator-password-1"
ANNOTATORS = {"ann1": "standard", "ann2": "standard", "ann3": "verbose", "ann4": "verbose"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    db: Path
    proc: subprocess.Popen
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, user: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, follow_redirects=False)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def seed(db: Path) -> dict[str, str]:
    """Schema, one admin and four annotators in two pools; returns an API token per user."""
    from prefloop.feedback import service
    from prefloop.feedback.db import Database

    service.migrate(str(db))
    d = Database(str(db))
    tokens = {}
    with d.write() as s:
        admin = service.create_user(s, "admin", ADMIN_PW, "admin")
        tokens["admin"] = service.create_token(s, admin, "test")
        for name, pool in ANNOTATORS.items():
            u = service.create_user(s, name, ANN_PW, "annotator", pool)
            tokens[name] = service.create_token(s, u, "test")
        s.commit()
    d.dispose()
    return tokens


def start_server(db: Path, **env: str) -> Server:
    port = free_port()
    code = ("import sys; from prefloop.feedback.cli import main; "
            f"sys.exit(main(['serve', '--db', {str(db)!r}, '--port', '{port}']))")
    log = db.with_name(f"server-{port}.log")
    with open(log, "wb") as f:  # a file, not a pipe: a pipe nobody reads would block a chatty server
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/login", timeout=2).status_code == 200:
                return Server(url, db, proc)
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start in 60 s")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One server for the tests that do not kill it (each test makes its own project)."""
    db = tmp_path_factory.mktemp("app") / "feedback.db"
    tokens = seed(db)
    srv = start_server(db)
    srv.tokens = tokens
    yield srv
    srv.stop()


def make_project(srv: Server, name: str, task_type: str, items: list[dict], members=tuple(ANNOTATORS),
                 **options) -> int:
    with srv.client("admin") as c:
        r = c.post("/api/projects", json={"name": name, "task_type": task_type, **options})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        for m in members:
            assert c.post(f"/api/projects/{pid}/members", json={"username": m}).status_code == 200
        r = c.post(f"/api/projects/{pid}/items", json={"items": items})
        assert r.status_code == 201, r.text
    return pid


def login(srv: Server, username: str, password: str) -> httpx.Client:
    """A browser-like client logged in with the form (session cookie), with its CSRF token as `.csrf`."""
    c = httpx.Client(base_url=srv.url, timeout=30, follow_redirects=False)
    page = c.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = c.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert r.status_code == 303, r.text
    home = c.get("/").text
    c.csrf = re.search(r'name="csrf_token" value="([^"]+)"', home).group(1)
    return c
