"""A judgment is acknowledged only after its commit: SIGKILL the server under concurrent load and find every
acknowledged judgment in the database."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
import uuid

import httpx

from .conftest import ANNOTATORS, make_project, seed, start_server
from .test_api import pair_items, prefer_good

LOAD_SECONDS = 2.0


def annotate_until_error(srv, name: str, pid: int, acked: list[str], stop: threading.Event) -> None:
    with srv.client(name) as c:
        c.timeout = httpx.Timeout(10.0)
        try:
            while not stop.is_set():
                view = c.post(f"/api/projects/{pid}/next").json()["assignment"]
                if view is None:
                    return
                sid = uuid.uuid4().hex
                r = c.post(f"/api/assignments/{view['assignment_id']}/judgment",
                           json={"submission_id": sid, "value": prefer_good(view)})
                if r.status_code == 200:
                    acked.append(sid)  # only after the server said so
        except (httpx.TransportError, ValueError):
            return  # the server died mid-request: that judgment was never acknowledged


def test_sigkill_under_load_loses_no_acknowledged_judgment(tmp_path):
    db = tmp_path / "kill.db"
    tokens = seed(db)
    srv = start_server(db)
    srv.tokens = tokens
    try:
        pid = make_project(srv, "load", "pairwise", pair_items(300), overlap=4)
        acked: dict[str, list[str]] = {name: [] for name in ANNOTATORS}
        stop = threading.Event()
        threads = [threading.Thread(target=annotate_until_error, args=(srv, name, pid, acked[name], stop))
                   for name in ANNOTATORS for _ in range(2)]  # two clients per annotator: 8 concurrent
        for t in threads:
            t.start()
        time.sleep(LOAD_SECONDS)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        stop.set()
        for t in threads:
            t.join(15)
    finally:
        srv.stop(signal.SIGKILL)
    n_acked = sum(len(v) for v in acked.values())
    assert n_acked >= 10, "too little load reached the server to test anything"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT submission_id FROM judgments")}
        per_item = conn.execute("SELECT max(c) FROM (SELECT count(*) c FROM judgments GROUP BY item_id)").fetchone()
    missing = [s for v in acked.values() for s in v if s not in stored]
    assert missing == [], f"{len(missing)} of {n_acked} acknowledged judgments lost"
    assert per_item[0] <= 4  # the overlap held under concurrency
