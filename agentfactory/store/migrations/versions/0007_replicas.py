"""high availability: agent owner and engine, replica leases, shared rate buckets

Revision ID: 0007
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("owner", sa.String(80), nullable=True))
        batch.add_column(sa.Column("engine_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("engine_lost_at", sa.Float(), nullable=True))
        batch.create_index("ix_agents_owner", ["owner"])
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(255), nullable=True),
        sa.Column("engine_id", sa.String(200), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
    op.drop_table("replicas")
    with op.batch_alter_table("agents") as batch:
        batch.drop_index("ix_agents_owner")
        batch.drop_column("engine_lost_at")
        batch.drop_column("engine_id")
        batch.drop_column("owner")
