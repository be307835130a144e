"""every uploader of a blob, not only the first

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_uploads",
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["digest"], ["blobs.digest"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("digest", "account_id"),
    )
    op.execute(
        "INSERT INTO blob_uploads (digest, account_id, created_at) "
        "SELECT digest, uploaded_by, created_at FROM blobs WHERE uploaded_by IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_table("blob_uploads")
