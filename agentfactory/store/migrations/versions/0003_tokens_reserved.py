"""tokens reserved by an agent's model calls in flight, so concurrent calls never overshoot its budget

Revision ID: 0003
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agents", sa.Column("tokens_reserved", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("tokens_reserved")
