"""search documents, with SQLite FTS5 or a PostgreSQL full-text index

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "search_documents",
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("name_words", sa.Text(), nullable=False),
        sa.Column("key_words", sa.Text(), nullable=False),
        sa.Column("text_words", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("family", sa.String(length=16), nullable=False),
        sa.Column("superclass", sa.String(length=64), nullable=False),
        sa.Column("signers", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["repository_id"], ["repositories.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("repository_id"),
    )
    op.create_index("search_documents_version", "search_documents", ["version_id"])
    op.create_index("repositories_downloads", "repositories", ["downloads"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE VIRTUAL TABLE search_fts USING fts5(body, tokenize='unicode61')")
    else:
        op.execute(
            "CREATE INDEX search_documents_fts ON search_documents "
            "USING gin (to_tsvector('simple', body))"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE search_fts")
    op.drop_index("repositories_downloads", "repositories")
    op.drop_table("search_documents")
