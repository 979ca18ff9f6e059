"""Files in and out (SPEC §9): uploads, what each agent was given and asked for, its artifacts

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(40), nullable=False, index=True),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("unpacked_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False, index=True),
        sa.Column("used_at", sa.Float(), nullable=True),
    )
    op.create_table(
        "agent_files",
        sa.Column("agent_pk", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("workspace", sa.String(40), nullable=True),
        sa.Column("artifacts", sa.JSON(), nullable=False),
        sa.Column("collected", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "artifacts",
        sa.Column("agent_pk", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("dropped", sa.Boolean(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("artifacts")
    op.drop_table("agent_files")
    op.drop_table("uploads")
