"""OCI distribution API: manifests pushed through /v2/, the blobs they refer to, uploads in
progress

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oci_manifests",
        sa.Column(
            "repository_id",
            sa.Integer(),
            sa.ForeignKey("repositories.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("digest", sa.String(71), primary_key=True),
        sa.Column("media_type", sa.String(128), nullable=False),
        sa.Column("artifact_type", sa.String(128), nullable=True),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column(
            "version_id",
            sa.Integer(),
            sa.ForeignKey("versions.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("subject", sa.String(71), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("oci_manifests_version", "oci_manifests", ["version_id"])
    op.create_index("oci_manifests_subject", "oci_manifests", ["repository_id", "subject"])
    op.create_table(
        "oci_manifest_blobs",
        sa.Column(
            "repository_id",
            sa.Integer(),
            sa.ForeignKey("repositories.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("manifest_digest", sa.String(71), primary_key=True),
        sa.Column("digest", sa.String(71), sa.ForeignKey("blobs.digest"), primary_key=True),
    )
    op.create_index("oci_manifest_blobs_digest", "oci_manifest_blobs", ["digest"])
    op.create_table(
        "oci_uploads",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "namespace_id",
            sa.Integer(),
            sa.ForeignKey("accounts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("repository_name", sa.String(64), nullable=False),
        sa.Column(
            "account_id",
            sa.Integer(),
            sa.ForeignKey("accounts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("oci_uploads")
    op.drop_index("oci_manifest_blobs_digest", table_name="oci_manifest_blobs")
    op.drop_table("oci_manifest_blobs")
    op.drop_index("oci_manifests_subject", table_name="oci_manifests")
    op.drop_index("oci_manifests_version", table_name="oci_manifests")
    op.drop_table("oci_manifests")
