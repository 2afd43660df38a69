"""Parallel requests of one user, and several server processes: the audit's reproductions, run on SQLite and
on a throwaway PostgreSQL server (where writers are not serialised)."""

from __future__ import annotations

import re
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import seed, start_url_server

THREADS = 16


def _parallel(fn, n: int = THREADS) -> list:
    """fn(i) for i < n in n threads released together."""
    gate = threading.Barrier(n)

    def run(i):
        gate.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def _project(srv, name: str, n_items: int) -> int:
    with srv.client("admin") as c:
        pid = c.post("/api/projects", json={"name": name, "task_type": "pairwise"}).json()["id"]
        assert c.post(f"/api/projects/{pid}/members", json={"username": "ann1"}).status_code == 200
        items = [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(n_items)]
        assert c.post(f"/api/projects/{pid}/items", json={"items": items}).status_code == 201
    return pid


def test_parallel_next_calls_of_one_user_get_one_assignment(any_server, request):
    """Before: on PostgreSQL some of these answered 500 and a user got several open assignments."""
    trials = 6
    pid = _project(any_server, f"race-next-{request.node.callspec.id}", trials)
    clients = [any_server.client("ann1") for _ in range(THREADS)]
    try:
        for _ in range(trials):
            answers = _parallel(lambda i: clients[i].post(f"/api/projects/{pid}/next"))
            assert [r.status_code for r in answers] == [200] * THREADS, [r.text for r in answers]
            ids = {r.json()["assignment"]["assignment_id"] for r in answers}
            assert len(ids) == 1, ids
            r = clients[0].post(f"/api/assignments/{ids.pop()}/judgment",
                                json={"submission_id": uuid.uuid4().hex, "value": {"choice": 0}})
            assert r.status_code == 200
        with any_server.client("admin") as c:
            progress = c.get(f"/api/projects/{pid}/stats").json()["progress"]
        assert progress["judgments"] == trials
    finally:
        for c in clients:
            c.close()


def test_parallel_resends_of_one_submission_store_one_judgment(any_server, request):
    """Before: on PostgreSQL half of these answered 500 instead of the documented `duplicate: true`."""
    pid = _project(any_server, f"race-submit-{request.node.callspec.id}", 3)
    clients = [any_server.client("ann1") for _ in range(THREADS)]
    try:
        for _ in range(3):
            aid = clients[0].post(f"/api/projects/{pid}/next").json()["assignment"]["assignment_id"]
            body = {"submission_id": uuid.uuid4().hex, "value": {"choice": 1}}
            url = f"/api/assignments/{aid}/judgment"
            answers = _parallel(lambda i, url=url, body=body: clients[i].post(url, json=body))
            assert [r.status_code for r in answers] == [200] * THREADS, [r.text for r in answers]
            assert sorted(r.json()["duplicate"] for r in answers) == [False] + [True] * (THREADS - 1)
            assert len({r.json()["judgment_id"] for r in answers}) == 1
    finally:
        for c in clients:
            c.close()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _workers(srv) -> list[int]:
    """The uvicorn worker processes under the server (the `serve` process -> its workers)."""
    return [p for p in _children(srv.proc.pid) if "multiprocessing.resource_tracker" not in
            open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")]


def _login_burst(srv, name: str, n: int) -> list[int]:
    c = httpx.Client(base_url=srv.url, timeout=60)
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)

    def attempt(i: int) -> int:
        with httpx.Client(base_url=srv.url, timeout=60) as ci:  # a new connection: any worker may take it
            ci.cookies.set("pl_login_csrf", token)
            return ci.post("/login", data={"username": name, "password": f"guess-{i}", "csrf_token": token}).status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(attempt, range(n)))


@pytest.fixture(params=["sqlite", "postgresql"])
def two_workers(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    if request.param == "sqlite":
        db = tmp / "feedback.db"
        tokens = seed(db)
        srv = start_url_server(str(db), tmp, "--workers", "2")
    else:
        url = request.getfixturevalue("postgres").create_database("workers")
        tokens = seed(url)
        srv = start_url_server(url, tmp, "--workers", "2")
    srv.tokens = tokens
    yield srv
    srv.stop()


def test_two_workers_enforce_one_login_limit(two_workers):
    """Before: each worker kept its own count, so two workers allowed twice the guesses."""
    workers = _workers(two_workers)
    assert len(workers) == 2, workers
    codes = _login_burst(two_workers, "ann2", 24)
    assert codes.count(401) == 5 and codes.count(429) == 19, codes
    # both processes answered requests while the limit held (each holds its own database connections)
    assert all(_children(w) == [] for w in workers)
    with two_workers.client("admin") as c:  # tokens and revocation: the same in every worker
        tok = c.post("/api/users/ann3/tokens", json={"name": "t"}).json()["token"]
    with httpx.Client(base_url=two_workers.url, headers={"authorization": f"Bearer {tok}"}) as c:
        assert all(c.get("/api/me").status_code == 200 for _ in range(4))
