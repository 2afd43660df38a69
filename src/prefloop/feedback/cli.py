"""`prefloop annotate ...`: run the feedback app and manage it from the server's shell.

Passwords are never taken on the command line (other users could read them in the process list): give
`--password-stdin`, or get a generated one printed once. Every command that changes something is recorded in
the audit log with the actor `cli`. Bad input prints `error: ...` and exits with code 2.

Parsing is declarative: `COMMANDS` names each subcommand, its options (each with its help) and the function
that runs it; each function calls the service layer. It is argparse rather than tyro (which the trainers'
option dataclasses use) because this command must start fast and import neither torch nor tyro: a server's
admin runs it often, and none of its options is shared with a trainer.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prefloop.errors import CLIError, DataError

DB_HELP = "database: a SQLite file path or a SQLAlchemy URL (postgresql+psycopg://user@host/db)"


_DRIVERS = {"psycopg", "psycopg2", "asyncpg", "pg8000", "pymysql", "MySQLdb"}




def _password(args) -> tuple[str, bool]:
    """(password, generated)."""
    if args.password_stdin:
        pw = sys.stdin.readline().rstrip("\n")
        if not pw:
            raise CLIError("no password on stdin")
        return pw, False
    return secrets.token_urlsafe(15), True


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _with_db(args, fn, write: bool = True):
    """fn(session) in one transaction (a write transaction unless `write=False`), after migrating."""
    from .db import Database
    from .service import migrate

    migrate(args.db)
    db = Database(args.db)
    try:
        with (db.write if write else db.read)() as s:
            out = fn(s)
            s.commit()
            return out
    finally:
        db.dispose()


def _cmd_user(args) -> None:
    from . import service

    pw, generated = _password(args)
    role = "admin" if args.command == "create-admin" else args.role
    password_hash = service.new_password_hash(pw)  # before the write transaction opens
    _with_db(args, lambda s: service.create_user(s, args.username, None, role, args.pool,
                                                 password_hash=password_hash))
    print(f"created {role} {args.username!r} (pool {args.pool})")
    if generated:
        print(f"password: {pw}")


def _cmd_account(args) -> None:
    from . import service

    pw, generated = _password(args) if args.command == "set-password" else (None, False)
    password_hash = service.new_password_hash(pw) if pw is not None else None

    def go(s):
        u = service.user_by_name(s, args.username)
        if u is None:
            raise CLIError(f"no user {args.username!r}")
        if pw is not None:
            service.set_password(s, u, None, "cli", password_hash=password_hash)
        else:
            service.deactivate_user(s, u, "cli")

    _with_db(args, go)
    print(f"{'password set' if pw is not None else 'deactivated'}: {args.username}")
    if generated:
        print(f"password: {pw}")


def _cmd_project(args) -> None:
    from . import service

    guidelines = ""
    if args.guidelines:
        try:
            guidelines = args.guidelines.read_text()
        except OSError as e:
            raise CLIError(f"{args.guidelines}: cannot read ({e.strerror or e})") from None
    spec = service.ProjectSpec(args.name, args.task, guidelines, args.overlap, args.gold_rate, tuple(args.scale),
                               tuple(_names(args.criteria)), tuple(_names(args.flags)))

    def go(s):
        p = service.create_project(s, spec)
        _add_members(s, p, _names(args.members))
        return p.id

    print(f"created project {args.name!r} (id {_with_db(args, go)})")


def _add_members(s, project, names: list[str]) -> None:
    from . import service

    for name in names:
        u = service.user_by_name(s, name)
        if u is None:
            raise CLIError(f"no user {name!r}")
        service.add_member(s, project, u)


def _cmd_import(args) -> None:
    from . import exchange, service

    project = _with_db(args, lambda s: service.project_by_ref(s, args.project), write=False)
    items = exchange.read_items(args.file, project)  # validated before the write transaction
    n = _with_db(args, lambda s: exchange.import_items(s, project, items, source=str(args.file)))
    print(f"imported {n} items")


def _usable(task_type: str, responses: list, k: int) -> list | None:
    """The responses of a sampled prompt an item can use (distinct, non-empty), or None if too few."""
    out = []
    for r in responses:
        if isinstance(r, str) and r.strip() and r not in out:
            out.append(r)
    if task_type in ("pairwise", "ranking"):
        return out[:2 if task_type == "pairwise" else k] if len(out) >= 2 else None
    if task_type == "demonstration":
        return out[:1]
    return out or None  # rating: one item per response


def _cmd_sample(args) -> None:
    import tempfile

    from prefloop.data.jsonl import iter_jsonl, write_jsonl
    from prefloop.recipes.sample import SampleConfig, run_sample

    from . import exchange, service

    def project_type(s):
        return service.project_by_ref(s, args.project).task_type

    task_type = _with_db(args, project_type)
    k = args.num_samples or {"pairwise": 2, "ranking": 4}.get(task_type, 1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "samples.jsonl"
        run_sample(SampleConfig(model=args.model, prompts=args.prompts, out=out, num_samples=k,
                                max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed))
        rows, skipped = [], 0
        for line_no, d in iter_jsonl(out):
            responses = _usable(task_type, d["responses"], k)
            if responses is None:
                skipped += 1
                continue
            rows.append({"id": f"{args.prompts.stem}:{line_no}", "prompt": d["prompt"], "responses": responses,
                         "meta": {"model": args.model, "source": "prefloop sample"}})
        if not rows:
            raise CLIError(f"the model gave no usable responses (empty or identical) for the {skipped} prompts")
        items = Path(tmp) / "items.jsonl"
        write_jsonl(items, rows)

        def go(s):
            p = service.project_by_ref(s, args.project)
            return exchange.import_items(s, p, exchange.read_items(items, p), source=f"sample:{args.model}")

        n = _with_db(args, go)
    print(f"imported {n} items sampled from {args.model}" + (f"; skipped {skipped} prompts with too few "
                                                               "distinct non-empty responses" if skipped else ""))


def _cmd_export(args) -> None:
    from . import exchange, service

    def read(s):  # a snapshot read beside a running server's writers
        p = service.project_by_ref(s, args.project)
        return p, exchange.export_records(s, p, args.kind, args.ties, args.include_gold)

    project, records = _with_db(args, read, write=False)
    n = exchange.write_export(args.out, records)
    _with_db(args, lambda s: service.audit(s, "cli", "project.export", project.name, kind=args.kind,
                                           records=n, out=str(args.out)))
    print(f"wrote {n} records to {args.out}")


def _cmd_backup(args) -> None:
    from .db import normalise_url, sqlite_path

    src = sqlite_path(normalise_url(args.db))
    if src is None:
        raise CLIError("backup supports SQLite; for PostgreSQL use pg_dump")
    if not src.exists():
        raise CLIError(f"{src}: database not found")
    n = backup_sqlite(src, args.out)
    print(f"backed up {src} to {args.out} ({n} pages)")


def backup_sqlite(src: Path, out: Path) -> int:
    """Copy a live SQLite database with the online backup API into `out` (atomically); returns the page count."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(src, timeout=30) as s, sqlite3.connect(tmp) as d:
        s.backup(d, pages=1024)
        pages = d.execute("PRAGMA page_count").fetchone()[0]
        d.execute("PRAGMA journal_mode=DELETE")
    s.close()
    d.close()
    tmp.replace(out)
    return pages


def restore_sqlite(source: Path, dst: Path) -> None:
    """Overwrite the database `dst` with the backup `source` through the backup API (WAL-safe)."""
    if not source.exists():
        raise CLIError(f"{source}: backup file not found")
    try:
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as b:
            ok = b.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            tables = {r[0] for r in b.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        raise CLIError(f"{source}: not a SQLite database ({e})") from None
    b.close()
    if not ok:
        raise CLIError(f"{source}: the backup fails SQLite's integrity check")
    if not {"alembic_version", "judgments", "users"} <= tables:
        raise CLIError(f"{source}: not a prefloop feedback database")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(source) as b, sqlite3.connect(dst, timeout=30) as d:
        b.backup(d)
    b.close()
    d.close()


def _cmd_restore(args) -> None:
    from .db import normalise_url, sqlite_path

    dst = sqlite_path(normalise_url(args.db))
    if dst is None:
        raise CLIError("restore supports SQLite; for PostgreSQL use pg_restore")
    restore_sqlite(args.source, dst)
    _with_db(args, lambda s: __import__("prefloop.feedback.service", fromlist=["audit"]).audit(
        s, "cli", "database.restore", str(args.source)))
    print(f"restored {dst} from {args.source}")


def _cmd_serve(args) -> None:
    import os

    import uvicorn

    from prefloop.errors import SecretKeyError

    from .app import Settings, create_app, default_data_dir
    from .db import normalise_url
    from .security import load_secret_key
    from .service import migrate

    if args.workers < 1:
        raise CLIError("--workers must be at least 1")
    data_dir = args.data_dir or default_data_dir(normalise_url(args.db))
    try:
        load_secret_key(data_dir)  # checked (and created) once, before any worker starts
    except SecretKeyError as e:
        raise CLIError(str(e)) from None
    migrate(args.db)
    # the app reads X-Forwarded-For itself, from the trusted proxies only; uvicorn's own handling (on by
    # default for 127.0.0.1) is off
    common = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": False,
              "proxy_headers": False}
    print(f"serving on http://{args.host}:{args.port} (OpenAPI at /openapi.json)", flush=True)
    if args.workers == 1:
        app = create_app(Settings(db_url=args.db, data_dir=args.data_dir, secure_cookies=args.secure_cookies,
                                  trusted_proxies=tuple(args.trusted_proxy)))
        uvicorn.run(app, **common)
        return
    # several processes: each builds the app from the environment (uvicorn's factory mode)
    os.environ.update({"PREFLOOP_DB": args.db, "PREFLOOP_TRUSTED_PROXIES": ",".join(args.trusted_proxy),
                       "PREFLOOP_SECURE_COOKIES": "1" if args.secure_cookies else ""})
    if data_dir is not None:
        os.environ["PREFLOOP_DATA_DIR"] = str(data_dir)
    uvicorn.run("prefloop.feedback.app:app_from_env", factory=True, workers=args.workers, **common)


def _cmd_revoke(args) -> None:
    from . import service

    token = None
    if args.token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise CLIError("no token on stdin")
    t = _with_db(args, lambda s: service.revoke_token(s, token, args.id))
    print(f"revoked token {t.id}")


def _cmd_tokens(args) -> None:
    from sqlalchemy import select

    from . import service
    from .db import ApiToken, User

    def go(s):
        q = select(ApiToken, User.username).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id)
        if args.username:
            u = service.user_by_name(s, args.username)
            if u is None:
                raise CLIError(f"no user {args.username!r}")
            q = q.where(ApiToken.user_id == u.id)
        return [(t.id, name, t.name, t.created_at, t.revoked) for t, name in s.execute(q)]

    for tid, name, label, created, revoked in _with_db(args, go, write=False):
        print(f"{tid}\t{name}\t{label}\t{created:%Y-%m-%d %H:%M}\t{'revoked' if revoked else 'active'}")


def _cmd_simulate(args) -> None:
    from prefloop.world.world import load_world

    from .client import FeedbackClient, simulate

    world = load_world(args.world)
    by_id = {a.id: a for a in world.annotators}
    if args.annotator not in by_id:
        raise CLIError(f"no annotator {args.annotator!r} in {args.world}; known: {', '.join(sorted(by_id))}")
    client = FeedbackClient(args.url, args.token, retries=max(0, args.retries))
    try:
        n = simulate(client, args.project, by_id[args.annotator], args.max_items)
    finally:
        client.close()
    print(f"{args.annotator} submitted {n} judgments")


def _cmd_init(args) -> None:
    from .service import migrate

    migrate(args.db)
    print("database is at the newest schema")


def _cmd_token(args) -> None:
    from . import service

    def go(s):
        u = service.user_by_name(s, args.username)
        if u is None:
            raise CLIError(f"no user {args.username!r}")
        return service.create_token(s, u, args.name)

    print(_with_db(args, go))


def _cmd_add_members(args) -> None:
    from . import service

    _with_db(args, lambda s: _add_members(s, service.project_by_ref(s, args.project), _names(args.users)))
    print("added")


def _cmd_release(args) -> None:
    from datetime import timedelta

    from . import service

    if args.older_than < 0:
        raise CLIError("--older-than must be >= 0 minutes")
    n = _with_db(args, lambda s: service.release_stale(s, service.project_by_ref(s, args.project),
                                                          timedelta(minutes=args.older_than)))
    print(f"released {n} assignments")


def _cmd_stats(args) -> None:
    from . import service
    from .dashboard import project_stats

    stats = _with_db(args, lambda s: project_stats(s, service.project_by_ref(s, args.project)), write=False)
    print(json.dumps(stats, indent=2))


# -- the command table: every subcommand, its options with their help, and the function that runs it --------


@dataclass(frozen=True)
class Opt:
    """One option: argparse's name(s) and keyword arguments; `help` is required (a test checks it is not empty)."""

    names: tuple[str, ...]
    help: str
    kwargs: dict = field(default_factory=dict)


def opt(*names: str, help: str, **kwargs) -> Opt:
    return Opt(names, help, kwargs)


@dataclass(frozen=True)
class Command:
    help: str
    run: Callable[[argparse.Namespace], None]
    options: tuple[Opt, ...] = ()
    one_of: tuple[Opt, ...] = ()  # exactly one of these must be given
    db: bool = True  # takes --db


USERNAME = opt("--username", required=True, help="the user's name (case-insensitive)")
PASSWORD_STDIN = opt("--password-stdin", action="store_true",
                     help="read the password from stdin (default: generate one and print it once)")
POOL = opt("--pool", default="default", help="the annotator pool / group label")
PROJECT = opt("--project", required=True, help="project name or id")

COMMANDS: dict[str, Command] = {
    "serve": Command("run the web app (migrates the database first)", _cmd_serve, (
        opt("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"),
        opt("--port", type=int, default=8000, help="TCP port to listen on (default: 8000)"),
        opt("--data-dir", type=Path, help="where the secret key lives (default: next to a SQLite file)"),
        opt("--secure-cookies", action="store_true", help="mark cookies Secure (serve behind HTTPS)"),
        opt("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug", "trace"],
            help="uvicorn's log level (default: warning)"),
        opt("--workers", type=int, default=1, help="server processes (they share limits through the database)"),
        opt("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
            help="a reverse proxy whose X-Forwarded-For names the client (repeatable); from anyone else that "
                 "header is ignored"))),
    "init": Command("create or upgrade the database schema", _cmd_init),
    "create-admin": Command("create an admin (the first one: there are no default accounts)", _cmd_user,
                            (USERNAME, PASSWORD_STDIN, POOL)),
    "add-user": Command("create a user", _cmd_user, (
        USERNAME, PASSWORD_STDIN,
        opt("--role", default="annotator", choices=["annotator", "admin"], help="the user's role (default: "
            "annotator)"),
        POOL)),
    "set-password": Command("set a user's password (their sessions end)", _cmd_account, (USERNAME, PASSWORD_STDIN)),
    "deactivate": Command("deactivate a user: no login, sessions and API tokens stop working", _cmd_account,
                          (USERNAME,)),
    "token": Command("create an API token for a user (printed once)", _cmd_token, (
        USERNAME, opt("--name", default="cli", help="a label for the token, shown by `tokens` (default: cli)"))),
    "revoke-token": Command("revoke one API token, by id (see `tokens`) or given on stdin", _cmd_revoke, one_of=(
        opt("--id", type=int, help="the token's id"),
        opt("--token-stdin", action="store_true", help="read the token itself from stdin"))),
    "tokens": Command("list API tokens (id, user, name, created, revoked); never the tokens themselves",
                      _cmd_tokens, (opt("--username", help="only this user's tokens"),)),
    "create-project": Command("create a project (campaign)", _cmd_project, (
        opt("--name", required=True, help="the project's name (unique)"),
        opt("--task", required=True, choices=["pairwise", "ranking", "rating", "demonstration"],
            help="what annotators do with each item"),
        opt("--guidelines", type=Path, help="a text or Markdown file with the guidelines"),
        opt("--overlap", type=int, default=1, help="distinct annotators per item"),
        opt("--gold-rate", type=float, default=0.0, help="share of assignments that are gold items"),
        opt("--scale", type=int, nargs=2, default=[1, 3], metavar=("LO", "HI"), help="rating scale"),
        opt("--criteria", default="", help="comma-separated named rating criteria"),
        opt("--flags", default="", help='comma-separated flags, e.g. "contains a made-up fact"'),
        opt("--members", default="", help="comma-separated usernames to add"))),
    "add-members": Command("add users to a project", _cmd_add_members, (
        PROJECT, opt("--users", required=True, help="comma-separated usernames"))),
    "import": Command("import items from a JSONL file (or `prefloop sample` output)", _cmd_import, (
        PROJECT, opt("file", type=Path, help="the items JSONL file"))),
    "sample": Command("sample responses from a model checkpoint (`prefloop sample`) and import them as items",
                      _cmd_sample, (
        PROJECT,
        opt("--model", required=True, help="a checkpoint directory (or hub id available offline)"),
        opt("--prompts", type=Path, required=True, help="a prompts JSONL file"),
        opt("--num-samples", type=int, help="responses per prompt (default: 2 pairwise, 4 ranking, else 1)"),
        opt("--max-new-tokens", type=int, default=64, help="most tokens sampled per response (default: 64)"),
        opt("--temperature", type=float, default=1.0, help="sampling temperature, > 0 (default: 1.0)"),
        opt("--seed", type=int, default=0, help="random seed of the sampler (default: 0)"))),
    "export": Command("export judgments as JSONL records the trainers read", _cmd_export, (
        PROJECT,
        opt("--out", type=Path, required=True, help="the JSONL file to write"),
        opt("--kind", choices=["comparisons", "rankings", "ratings", "demonstrations"],
            help="record kind (default: the project's task's own)"),
        opt("--ties", choices=["drop", "keep"], default="drop",
            help="pairwise ties: drop them, or keep them (margin 0, meta.tie) (default: drop)"),
        opt("--include-gold", action="store_true", help="also export the judgments of gold items"))),
    "release": Command("take back unjudged assignments older than some minutes, so others get their items",
                       _cmd_release, (
        PROJECT, opt("--older-than", type=float, required=True, metavar="MINUTES",
                     help="release assignments handed out more than this many minutes ago"))),
    "stats": Command("print the dashboard statistics of a project as JSON", _cmd_stats, (PROJECT,)),
    "backup": Command("copy a SQLite database with the online backup API (safe while serving)", _cmd_backup, (
        opt("--out", type=Path, required=True, help="the backup file to write"),)),
    "restore": Command("replace a SQLite database with a backup (stop the server first)", _cmd_restore, (
        opt("--from", dest="source", type=Path, required=True, help="the backup file to restore from"),)),
    "simulate": Command("let simulated annotators of a world annotate through the REST API", _cmd_simulate, (
        opt("--url", required=True, help="base URL of the running app, e.g. http://127.0.0.1:8000"),
        opt("--token", required=True, help="the API token of the user the simulated annotator acts as"),
        opt("--project", type=int, required=True, help="project id"),
        opt("--world", type=Path, required=True, help="a world directory (`prefloop world` output)"),
        opt("--annotator", default="a00", help="id of one of the world's simulated annotators"),
        opt("--max-items", type=int, help="stop after this many judgments (default: until none is left)"),
        opt("--retries", type=int, default=5, help="resends after a network error or a 5xx answer")), db=False),
}


def _parser() -> argparse.ArgumentParser:
    """The argparse parser built from COMMANDS (nothing but declarations here)."""
    p = argparse.ArgumentParser(prog="prefloop annotate", description="the human feedback web app")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for name, c in COMMANDS.items():
        sp = sub.add_parser(name, help=c.help, description=c.help)
        if c.db:
            sp.add_argument("--db", required=True, help=DB_HELP)
        for o in c.options:
            sp.add_argument(*o.names, help=o.help, **o.kwargs)
        if c.one_of:
            g = sp.add_mutually_exclusive_group(required=True)
            for o in c.one_of:
                g.add_argument(*o.names, help=o.help, **o.kwargs)
        sp.set_defaults(run=c.run)
    return p


def _shown(db: str) -> str:
    """The database URL without its password, for messages."""
    if "://" not in db:
        return db
    from sqlalchemy.engine import make_url

    try:
        return make_url(db).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: show only its scheme
        return db.split("://", 1)[0] + "://..."


def main(argv: list[str]) -> int:
    """Entry point of `prefloop annotate`; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    from sqlalchemy.exc import SQLAlchemyError

    from prefloop.errors import AppError, FeedbackError

    try:
        args.run(args)
    except (AppError, DataError, CLIError, FeedbackError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SQLAlchemyError as e:  # cannot open or use the database: say which and why, in one line
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        print(f"error: {_shown(getattr(args, 'db', ''))}: database error ({reason})", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if getattr(args, "db", "").count("://") and e.name and e.name.split(".")[0] in _DRIVERS:
            print(f"error: {_shown(args.db)}: the database driver is not installed ({e})", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130
    return 0
