"""Load benchmark of the feedback app: N concurrent simulated annotators on loopback for a bounded time.

    python benchmarks/bench_feedback.py                      # 32 annotators, 20 s, SQLite in a temp dir
    python benchmarks/bench_feedback.py --seconds 60 --annotators 32 --json bench-out/feedback.json
    python benchmarks/bench_feedback.py --db postgresql+psycopg://user@localhost/bench   # an empty database
    python benchmarks/bench_feedback.py --workers 2 --sigkill   # 2 server processes, killed with SIGKILL at the end

A real `prefloop annotate serve` process (`--workers` uvicorn workers) serves a pairwise project (overlap 3); each
simulated annotator runs its own loop in one asyncio client process: POST /api/projects/{id}/next, then POST
the judgment with a fresh submission id, as fast as the server answers (no think time: this measures the
server, not people). The clients use a minimal keep-alive HTTP/1.1 client to leave the CPUs to the server.
Reported: judgments/s (acknowledged, i.e. committed, per second over the measured
window after a warm-up) and the p50/p99 latency of each request kind and of the whole next+submit cycle.
The server and the clients share the machine's cores; the load average is printed with the result.
With `--sigkill` the server's processes are killed with SIGKILL while the clients are still sending, and every
acknowledged judgment is looked up in the database afterwards (`lost` counts those missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(db: str, n_annotators: int, n_items: int, overlap: int) -> tuple[list[str], int]:
    """Schema, annotators with API tokens, and a pairwise project with `n_items` items; (tokens, project id)."""
    from prefloop.feedback import exchange, service
    from prefloop.feedback.db import Database

    service.migrate(db)
    d = Database(db)
    tokens = []
    with d.write() as s:
        p = service.create_project(s, service.ProjectSpec("bench", "pairwise", overlap=overlap))
        for i in range(n_annotators):
            u = service.create_user(s, f"bench{i:02d}", uuid.uuid4().hex, "annotator", ["a", "b"][i % 2])
            tokens.append(service.create_token(s, u, "bench"))
            service.add_member(s, p, u)
        items = [{"id": f"q{i}", "prompt": f"User: question {i}?\nAssistant:", "gold": None, "meta": None,
                  "responses": [f" An answer of some length to question {i}.", f" Another answer to {i}."]}
                 for i in range(n_items)]
        exchange.import_items(s, p, items)
        s.commit()
        pid = p.id
    d.dispose()
    return tokens, pid


def start_server(db: str, port: int, log: Path, workers: int = 1) -> subprocess.Popen:
    code = ("import sys; from prefloop.feedback.cli import main; "
            f"sys.exit(main(['serve', '--db', {db!r}, '--port', '{port}', '--workers', '{workers}']))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("PREFLOOP_SECRET_KEY", uuid.uuid4().hex)  # a PostgreSQL database has no data directory
    with open(log, "wb") as f:  # a session of its own, so SIGKILL reaches every worker
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start in 120 s")


class Conn:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: the load generator shares the CPUs with the
    server, so it should cost as little as possible (a general client such as httpx costs several times more
    per request than this)."""

    def __init__(self, host: str, port: int, token: str):
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n").encode()
        self.writer.write(head + self.auth + b"\r\n" + data)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return status, json.loads(payload) if payload else {}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def annotator(url: str, token: str, pid: int, t_start: float, t_end: float, out: dict) -> None:
    host, port = url.rsplit("/", 1)[1].split(":")
    c = Conn(host, int(port), token)
    try:
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            status, body = await c.request("POST", f"/api/projects/{pid}/next")
            t1 = time.monotonic()
            view = body.get("assignment") if status == 200 else None
            if view is None:
                out["errors"].append(status if status != 200 else "exhausted")
                return
            judgment = {"submission_id": uuid.uuid4().hex, "value": {"choice": int(t0 * 1e6) % 2, "strength": 2}}
            status, ack = await c.request("POST", f"/api/assignments/{view['assignment_id']}/judgment", judgment)
            t2 = time.monotonic()
            if status != 200:
                out["errors"].append(status)
                continue
            out["acked_ids"].append(ack["judgment_id"])
            if t0 >= t_start:  # after the warm-up
                out["next"].append(t1 - t0)
                out["submit"].append(t2 - t1)
                out["cycle"].append(t2 - t0)
                out["acked_at"].append(t2)
    finally:
        c.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux), nan elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


async def drive(url: str, tokens: list[str], pid: int, warmup: float, seconds: float) -> dict:
    out = {"next": [], "submit": [], "cycle": [], "acked_at": [], "acked_ids": [], "errors": []}
    now = time.monotonic()
    t_start, t_end = now + warmup, now + warmup + seconds
    try:
        await asyncio.gather(*(annotator(url, t, pid, t_start, t_end, out) for t in tokens))
    except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
        pass  # the server was killed under the clients (--sigkill)
    measured = [t for t in out["acked_at"] if t_start <= t <= t_end]
    ms = {k: {"p50_ms": round(1000 * pct(out[k], 0.5), 1), "p99_ms": round(1000 * pct(out[k], 0.99), 1)}
          for k in ("next", "submit", "cycle")}
    return {"judgments": len(measured), "judgments_per_s": round(len(measured) / seconds, 1),
            "latency": ms, "errors": len(out["errors"]), "error_kinds": sorted(set(map(str, out["errors"]))),
            "acked_ids": out["acked_ids"]}


def lost_judgments(db: str, acked: list[int]) -> int:
    """How many acknowledged judgments the database does not hold."""
    from sqlalchemy import select

    from prefloop.feedback.db import Database, Judgment

    d = Database(db)
    with d.read() as s:
        stored = set(s.scalars(select(Judgment.id)))
    d.dispose()
    return len(set(acked) - stored)


async def kill_during(proc: subprocess.Popen, at: float) -> None:
    await asyncio.sleep(at)
    os.killpg(proc.pid, signal.SIGKILL)


async def run_clients(proc: subprocess.Popen, args, url: str, tokens: list[str], pid: int) -> dict:
    if not args.sigkill:
        return await drive(url, tokens, pid, args.warmup, args.seconds)
    killer = asyncio.ensure_future(kill_during(proc, args.warmup + args.seconds - 1.0))
    res = await drive(url, tokens, pid, args.warmup, args.seconds)
    await killer
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time (after the warm-up)")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--items", type=int, default=6000)
    ap.add_argument("--overlap", type=int, default=3)
    ap.add_argument("--db", help="database URL (default: a fresh SQLite file in a temp dir)")
    ap.add_argument("--workers", type=int, default=1, help="server processes (`serve --workers`)")
    ap.add_argument("--sigkill", action="store_true",
                    help="SIGKILL the server 1 s before the end, then check that no acknowledged judgment is lost")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "bench.db")
        t0 = time.monotonic()
        tokens, pid = seed(db, args.annotators, args.items, args.overlap)
        print(f"seeded {args.items} items, {args.annotators} annotators in {time.monotonic() - t0:.1f} s", flush=True)
        port = free_port()
        proc = start_server(db, port, Path(tmp) / "server.log", args.workers)
        try:
            cpu0 = cpu_seconds(proc.pid) if args.workers == 1 else float("nan")
            res = asyncio.run(run_clients(proc, args, f"http://127.0.0.1:{port}", tokens, pid))
            cpu = cpu_seconds(proc.pid) - cpu0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        acked = res.pop("acked_ids")
        res["acknowledged"], res["lost"] = len(acked), lost_judgments(db, acked)
    total = res["judgments"] * (args.seconds + args.warmup) / args.seconds  # about, warm-up included
    res["server_cpu_ms_per_judgment"] = round(1000 * cpu / total, 2) if total and cpu == cpu else None
    res |= {"annotators": args.annotators, "seconds": args.seconds, "workers": args.workers, "sigkill": args.sigkill,
            "database": "sqlite" if not args.db else args.db.split(":", 1)[0],
            "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    lat = res["latency"]
    print(f"{res['judgments_per_s']} judgments/s over {args.seconds:.0f} s with {args.annotators} annotators; "
          f"submit p50 {lat['submit']['p50_ms']} ms, p99 {lat['submit']['p99_ms']} ms; "
          f"next p50 {lat['next']['p50_ms']} ms, p99 {lat['next']['p99_ms']} ms; "
          f"cycle p99 {lat['cycle']['p99_ms']} ms; errors {res['errors']}; "
          f"lost {res['lost']} of {res['acknowledged']} acknowledged; "
          f"server CPU {res['server_cpu_ms_per_judgment']} ms per judgment; "
          f"load average {res['loadavg_1m']} on {res['cpus']} CPUs")
    print(json.dumps(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
