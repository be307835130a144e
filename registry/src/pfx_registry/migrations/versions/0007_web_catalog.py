"""web catalog: browser sessions, and the license and author of each concept file

Revision ID: 0007
Revises: 0006

Files indexed before this revision show no license or author until they are uploaded again (the
index keeps what it read at upload; the migration does not read the blob store).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("concept_files") as batch:
        batch.add_column(sa.Column("license", sa.String(128), nullable=True))
        batch.add_column(sa.Column("author", sa.String(128), nullable=True))
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "token_id",
            sa.Integer(),
            sa.ForeignKey("tokens.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("web_sessions_token", "web_sessions", ["token_id"])


def downgrade() -> None:
    op.drop_index("web_sessions_token", table_name="web_sessions")
    op.drop_table("web_sessions")
    with op.batch_alter_table("concept_files") as batch:
        batch.drop_column("author")
        batch.drop_column("license")
