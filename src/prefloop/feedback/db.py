"""Database schema of the feedback app (SQLAlchemy 2) and engine setup for SQLite and PostgreSQL.

The schema is created and upgraded only by the Alembic migrations in `migrations/` (`migrate`), never by
`create_all`, so a deployed database and a fresh one always have the same tables.

SQLite runs in WAL mode with `synchronous=NORMAL`: a committed transaction survives the server process being
killed (SIGKILL), since the WAL is in the operating system's cache; set `PREFLOOP_SQLITE_SYNCHRONOUS=FULL` to
survive a power cut too, at the cost of an fsync per commit. Write transactions start with
`BEGIN IMMEDIATE`, so two writers never deadlock on a lock upgrade; reads use a separate engine with
ordinary deferred transactions, which WAL lets run beside the writer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

TASK_TYPES = ("pairwise", "ranking", "rating", "demonstration")
ROLES = ("admin", "annotator")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    __table_args__ = (Index("ix_users_username_lower", func.lower(text("username")), unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    pool: Mapped[str] = mapped_column(String(64), default="default")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class LoginSession(Base):
    """A browser session: the cookie holds a random token, the table only its SHA-256."""

    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    task_type: Mapped[str] = mapped_column(String(16))
    guidelines: Mapped[str] = mapped_column(Text, default="")
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    """Task options: `scale` [lo, hi], `criteria` [names], `flags` [names], `labels` {value: text}."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("project_id", "external_id"),
                      # serves "ORDER BY n_assigned DESC, id" by a backward scan, without sorting
                      Index("ix_items_next", "project_id", "is_gold", "n_assigned", text("id DESC")))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(255))
    prompt: Mapped[object] = mapped_column(JSON)
    responses: Mapped[list] = mapped_column(JSON)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    meta: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    n_assigned: Mapped[int] = mapped_column(Integer, default=0)
    """Assignments handed out so far (kept here so choosing the next item is one indexed query)."""


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),
                      Index("ix_assignments_open", "user_id", "project_id", "done"),
                      # at most one open assignment per user and project, even under parallel requests
                      Index("ix_assignments_one_open", "user_id", "project_id", unique=True,
                            sqlite_where=text("done = 0"), postgresql_where=text("done = false")))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    order: Mapped[list] = mapped_column(JSON)
    """Display order: position -> response index (randomised per annotator)."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    skip_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    """Set when the annotator skipped the item (then `done` and no judgment; the item goes to someone else)."""


class Judgment(Base):
    __tablename__ = "judgments"
    __table_args__ = (UniqueConstraint("user_id", "submission_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    submission_id: Mapped[str] = mapped_column(String(64))
    value: Mapped[dict] = mapped_column(JSON)
    """In response indices (not display positions): see `service.normalise_judgment`."""
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    edited_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    """When the annotator last changed their answer (the audit log keeps the earlier values)."""


class AuditEvent(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    """Username, or `cli` for commands run on the server."""
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class RateEvent(Base):
    """One counted attempt (a login) under a key such as `user:alice` or `ip:10.0.0.7`: kept in the database so
    that every server process enforces one limit."""

    __tablename__ = "rate_events"
    __table_args__ = (Index("ix_rate_events_key_at", "key", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200))
    at: Mapped[float] = mapped_column(Float)
    """Wall-clock seconds (time.time()), comparable across processes."""


def normalise_url(db: str | os.PathLike) -> str:
    """A database URL from a URL or a plain SQLite file path."""
    s = str(db)
    if "://" in s:
        return s
    return f"sqlite:///{Path(s).expanduser().resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///` URL, None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url[len("sqlite:///"):])


def make_engine(url: str, *, immediate: bool = False) -> Engine:
    """An engine; for SQLite with WAL, a busy timeout, foreign keys, and `BEGIN IMMEDIATE` if `immediate`."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                           pool_size=20, max_overflow=20)
    sync = os.environ.get("PREFLOOP_SQLITE_SYNCHRONOUS", "NORMAL").upper()
    if sync not in ("NORMAL", "FULL", "EXTRA"):
        sync = "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={sync}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """The engines and session factories of one database: `write()` for transactions that change data.

    With SQLite, the writers of this process also queue on a lock before `BEGIN IMMEDIATE`: SQLite's own
    busy handler polls with sleeps of up to 100 ms, which under 30+ concurrent writers gives a long and
    unfair latency tail; the lock hands the database over in arrival order instead.
    """

    def __init__(self, url: str):
        self.url = normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.write_engine = make_engine(self.url, immediate=True)
        self.read_engine = make_engine(self.url) if self.is_sqlite else self.write_engine
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)
        self.read = sessionmaker(self.read_engine, expire_on_commit=False)
        self._lock = threading.Lock() if self.is_sqlite else None

    @contextmanager
    def write(self) -> Iterator[Session]:
        if self._lock is None:
            with self._write() as s:
                yield s
            return
        with self._lock, self._write() as s:
            yield s

    def dispose(self) -> None:
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()
