"""Shared rate-limit events, case-insensitive unique usernames, at most one open assignment per user and project.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # login attempts live in the database, so every server process (worker) counts against the same limit
    op.create_table(
        "rate_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("at", sa.Float, nullable=False))
    op.create_index("ix_rate_events_key_at", "rate_events", ["key", "at"])
    # "Alice" and "alice" are one account: a unique index on the lower-case name refuses the second
    op.create_index("ix_users_username_lower", "users", [sa.text("lower(username)")], unique=True)
    # the database itself refuses a second open assignment of one user in one project (parallel requests)
    op.create_index("ix_assignments_one_open", "assignments", ["user_id", "project_id"], unique=True,
                    sqlite_where=sa.text("done = 0"), postgresql_where=sa.text("done = false"))


def downgrade() -> None:
    op.drop_index("ix_assignments_one_open", "assignments")
    op.drop_index("ix_users_username_lower", "users")
    op.drop_index("ix_rate_events_key_at", "rate_events")
    op.drop_table("rate_events")
