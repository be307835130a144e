"""token parents: a token created with a token remembers it (scope, expiry and revocation follow)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "tokens_parent_id_fkey", "tokens", ["parent_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("tokens_parent", ["parent_id"])


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_index("tokens_parent")
        batch.drop_constraint("tokens_parent_id_fkey", type_="foreignkey")
        batch.drop_column("parent_id")
