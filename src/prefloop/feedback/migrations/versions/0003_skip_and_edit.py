"""Skipped assignments keep the annotator's reason; an edited judgment records when it was last changed.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table's columns in place; alembic copies the table there
    with op.batch_alter_table("assignments") as batch:
        batch.add_column(sa.Column("skip_reason", sa.String(500), nullable=True))
    with op.batch_alter_table("judgments") as batch:
        batch.add_column(sa.Column("edited_at", sa.DateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("judgments") as batch:
        batch.drop_column("edited_at")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("skip_reason")
