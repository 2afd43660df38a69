"""The initial schema: users, sessions, API tokens, projects, members, items, assignments, judgments, audit log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True)


def _fk(name: str, table: str, **kw) -> sa.Column:
    return sa.Column(name, sa.Integer, sa.ForeignKey(f"{table}.id", ondelete="CASCADE"), nullable=False, **kw)


def upgrade() -> None:
    op.create_table(
        "users", _id(),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False))
    op.create_table(
        "sessions", _id(),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        _fk("user_id", "users", index=True),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False))
    op.create_table(
        "api_tokens", _id(),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        _fk("user_id", "users", index=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False))
    op.create_table(
        "projects", _id(),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("task_type", sa.String(16), nullable=False),
        sa.Column("guidelines", sa.Text, nullable=False),
        sa.Column("overlap", sa.Integer, nullable=False),
        sa.Column("gold_rate", sa.Float, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False))
    op.create_table(
        "members", _id(),
        _fk("project_id", "projects", index=True),
        _fk("user_id", "users", index=True),
        sa.UniqueConstraint("project_id", "user_id"))
    op.create_table(
        "items", _id(),
        _fk("project_id", "projects", index=True),
        sa.Column("external_id", sa.String(255), nullable=False),
        sa.Column("prompt", sa.JSON, nullable=False),
        sa.Column("responses", sa.JSON, nullable=False),
        sa.Column("is_gold", sa.Boolean, nullable=False),
        sa.Column("gold", sa.JSON, nullable=True),
        sa.Column("meta", sa.JSON, nullable=True),
        sa.Column("n_assigned", sa.Integer, nullable=False),
        sa.UniqueConstraint("project_id", "external_id"))
    op.create_index("ix_items_next", "items", ["project_id", "is_gold", "n_assigned", sa.text("id DESC")])
    op.create_table(
        "assignments", _id(),
        _fk("project_id", "projects", index=True),
        _fk("item_id", "items", index=True),
        _fk("user_id", "users", index=True),
        sa.Column("order", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.UniqueConstraint("item_id", "user_id"))
    op.create_index("ix_assignments_open", "assignments", ["user_id", "project_id", "done"])
    op.create_table(
        "judgments", _id(),
        sa.Column("assignment_id", sa.Integer, sa.ForeignKey("assignments.id", ondelete="CASCADE"),
                  nullable=False, unique=True),
        _fk("project_id", "projects", index=True),
        _fk("item_id", "items", index=True),
        _fk("user_id", "users", index=True),
        sa.Column("submission_id", sa.String(64), nullable=False),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("user_id", "submission_id"))
    op.create_table(
        "audit_log", _id(),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("detail", sa.JSON, nullable=True))


def downgrade() -> None:
    for table in ("audit_log", "judgments", "assignments", "items", "members", "projects", "api_tokens",
                  "sessions", "users"):
        op.drop_table(table)
