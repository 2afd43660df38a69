"""The Alembic migration builds exactly the models' schema (SQLite, and PostgreSQL as offline SQL); the secret
key never comes from code; importing the package does not import the web app."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest


def test_migration_matches_the_models(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine, inspect

    from prefloop.feedback.db import Base
    from prefloop.feedback.service import migrate

    db = tmp_path / "m.db"
    migrate(str(db))
    migrate(str(db))  # idempotent
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # alembic compares the expression index ("id DESC") only roughly
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert [d for d in diff if not (d[0] in ("add_index", "remove_index") and d[1].name == "ix_items_next")] == []
        cols = [(r[2], r[3]) for r in conn.exec_driver_sql("PRAGMA index_xinfo(ix_items_next)") if r[5]]
        assert cols == [("project_id", 0), ("is_gold", 0), ("n_assigned", 0), ("id", 1)]  # (name, descending)
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert {"users", "sessions", "api_tokens", "projects", "members", "items", "assignments", "judgments",
            "audit_log", "rate_events", "alembic_version"} == tables


def test_postgresql_migration_renders(capsys):
    from alembic import command
    from alembic.config import Config

    import prefloop.feedback.service as service

    cfg = Config(stdout=io.StringIO())
    cfg.set_main_option("script_location", str(Path(service.__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", "postgresql://user@localhost/feedback")
    command.upgrade(cfg, "head", sql=True)
    sql = capsys.readouterr().out + cfg.stdout.getvalue()
    assert "CREATE TABLE judgments" in sql and "UNIQUE (user_id, submission_id)" in sql
    assert "CREATE INDEX ix_items_next ON items (project_id, is_gold, n_assigned, id DESC)" in sql
    from sqlalchemy.dialects import postgresql

    pick = str(service._PICK.compile(dialect=postgresql.dialect()))
    assert pick.endswith("FOR UPDATE SKIP LOCKED")  # concurrent writers take different items on PostgreSQL


def test_secret_key_from_environment_or_generated_private_file(tmp_path, monkeypatch):
    from prefloop.feedback.security import load_secret_key

    monkeypatch.delenv("PREFLOOP_SECRET_KEY", raising=False)
    key = load_secret_key(tmp_path)
    f = tmp_path / "secret_key"
    assert len(key) == 64 and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert load_secret_key(tmp_path) == key  # generated once, then reused
    assert load_secret_key(tmp_path / "other") != key  # each instance its own
    monkeypatch.setenv("PREFLOOP_SECRET_KEY", "k" * 40)
    assert load_secret_key(tmp_path) == b"k" * 40
    monkeypatch.setenv("PREFLOOP_SECRET_KEY", "short")
    with pytest.raises(ValueError, match="at least 32"):
        load_secret_key(tmp_path)


def test_package_import_stays_light():
    code = ("import sys, prefloop, prefloop.feedback, prefloop.feedback.agreement; "
            "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    assert out.strip() == "[]"


def test_passwords_are_argon2id_and_checked():
    from prefloop.feedback.security import hash_password, verify_password

    h = hash_password("correct horse battery")
    assert h.startswith("$argon2id$") and "m=65536" in h  # memory-hard: 64 MiB per hash
    assert verify_password(h, "correct horse battery") and not verify_password(h, "correct horse")
    assert not verify_password(None, "anything")
