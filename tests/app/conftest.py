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


def seed(db: Path | str) -> dict[str, str]:
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


def seeded_server(tmp_path_factory, name: str) -> Server:
    """A server on a new SQLite database holding the standard users; `srv.tokens` are their API tokens."""
    db = tmp_path_factory.mktemp(name) / "feedback.db"
    tokens = seed(db)
    srv = start_server(db)
    srv.tokens = tokens
    return srv


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory):
    """One server for the tests that do not kill it (each test makes its own project)."""
    srv = seeded_server(tmp_path_factory, "app")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server(sqlite_server):
    """The shared SQLite server (a module may override `server` to run its tests on PostgreSQL too)."""
    return sqlite_server


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


# ---------------------------------------------------------------- a throwaway PostgreSQL server

def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@dataclass
class Postgres:
    port: int
    datadir: Path
    bindir: Path
    run_as: list[str]

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://prefloop@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=prefloop dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _unavailable(reason: str):
    """Skip, or fail where PostgreSQL is required (CI sets PREFLOOP_REQUIRE_POSTGRESQL=1, so a broken setup
    cannot pass silently as skips)."""
    if os.environ.get("PREFLOOP_REQUIRE_POSTGRESQL") == "1":
        pytest.fail(f"PostgreSQL is required here: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of its own on a free loopback port (initdb into a temporary directory, trust
    authentication, fsync off), started once per test session; skips with the reason where it cannot run."""
    import shutil
    import tempfile

    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install prefloop[app])")
    bindir = _postgres_bin()
    if bindir is None:
        _unavailable("PostgreSQL is not installed (Debian: apt-get install postgresql; `make test` does it as root)")
    run_as: list[str] = []
    datadir = Path(tempfile.mkdtemp(prefix="prefloop-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the package's own user
        import pwd

        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(datadir, pg_user.pw_uid, pg_user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    pgdata = datadir / "data"
    try:
        subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(pgdata), "-U", "prefloop", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        opts = (f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=300")
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(pgdata), "-o", opts, "-l",
                        str(datadir / "log"), "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        shutil.rmtree(datadir, ignore_errors=True)
        detail = getattr(e, "stderr", b"") or b""
        _unavailable(f"PostgreSQL could not start: {e} {detail.decode(errors='replace')[-300:]}")
    yield Postgres(port, datadir, bindir, run_as)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"],
                   capture_output=True, timeout=60)
    shutil.rmtree(datadir, ignore_errors=True)


PG_SECRET = "k" * 40  # a PostgreSQL database has no data directory for a generated key


def start_url_server(url: str, log_dir: Path, *extra: str, **env: str) -> Server:
    """A server on a database URL (PostgreSQL), like `start_server`, with extra `serve` options."""
    port = free_port()
    args = ["serve", "--db", url, "--port", str(port), *extra]
    code = f"import sys; from prefloop.feedback.cli import main; sys.exit(main({args!r}))"
    log = log_dir / f"server-{port}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PREFLOOP_SECRET_KEY": PG_SECRET, **env})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(base + "/login", timeout=2).status_code == 200:
                return Server(base, log_dir / "unused", proc)
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 60 s")


@pytest.fixture(scope="session")
def pg_server(postgres, tmp_path_factory):
    """The app on the throwaway PostgreSQL server, seeded like `server`."""
    url = postgres.create_database("app")
    tokens = seed(url)
    srv = start_url_server(url, tmp_path_factory.mktemp("pg-app"))
    srv.tokens = tokens
    yield srv
    srv.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_server(request):
    """Each test runs against SQLite and against PostgreSQL."""
    return request.getfixturevalue("sqlite_server" if request.param == "sqlite" else "pg_server")


@pytest.fixture(scope="module")
def own_limits_server(tmp_path_factory):
    """A server of the module's own, for tests that spend the login limits."""
    srv = seeded_server(tmp_path_factory, "own")
    yield srv
    srv.stop()
