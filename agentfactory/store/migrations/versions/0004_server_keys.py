"""the server's own secret key; request fingerprints become keyed

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_keys",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # The old fingerprints were bare SHA-256 over the request, secrets included: a guessing oracle
    # for anyone who reads them. A request whose fingerprint is gone replays without the body check.
    op.execute("UPDATE agents SET request_hash = NULL WHERE request_hash IS NOT NULL")


def downgrade() -> None:
    op.drop_table("server_keys")
