"""search terms: each document word with its weight and version, for one-word searches

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: As pfx_registry.search.MAX_WORD when this migration was written.
MAX_WORD = 64


def upgrade() -> None:
    op.create_table(
        "search_terms",
        sa.Column("word", sa.String(length=MAX_WORD), nullable=False),
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["repository_id"], ["repositories.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("word", "repository_id"),
    )
    op.create_index("search_terms_rank", "search_terms", ["word", "weight", "repository_id"])
    op.create_index("search_terms_recent", "search_terms", ["word", "version_id", "repository_id"])
    op.create_index("search_terms_repository", "search_terms", ["repository_id"])
    # the terms of the documents that exist already (weights as search.term_weights gives them)
    bind = op.get_bind()
    documents = bind.execute(
        sa.text(
            "SELECT repository_id, version_id, name_words, key_words, text_words "
            "FROM search_documents"
        )
    ).all()
    rows = []
    for repository_id, version_id, name_words, key_words, text_words in documents:
        weights: dict[str, int] = {}
        for words, weight in ((text_words, 1), (key_words, 2), (name_words, 3)):
            for word in words.split():
                weights[word[:MAX_WORD]] = weight
        rows += [
            {"word": word, "repository_id": repository_id, "weight": weight, "version": version_id}
            for word, weight in weights.items()
        ]
    if rows:
        bind.execute(
            sa.text(
                "INSERT INTO search_terms (word, repository_id, weight, version_id) "
                "VALUES (:word, :repository_id, :weight, :version)"
            ),
            rows,
        )


def downgrade() -> None:
    op.drop_index("search_terms_repository", "search_terms")
    op.drop_index("search_terms_recent", "search_terms")
    op.drop_index("search_terms_rank", "search_terms")
    op.drop_table("search_terms")
