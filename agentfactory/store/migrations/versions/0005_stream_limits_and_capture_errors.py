"""api_keys.max_streams (concurrent streams and waits per key) and agents.capture_error

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("max_streams", sa.Integer(), nullable=False, server_default="10"))
    op.add_column("agents", sa.Column("capture_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("capture_error")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("max_streams")
