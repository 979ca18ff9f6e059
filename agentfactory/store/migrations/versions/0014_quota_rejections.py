"""quota_rejections (each key's refused requests per hour and reason) and each replica's warm pool

Revision ID: 0014
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quota_rejections",
        sa.Column("bucket", sa.BigInteger(), primary_key=True),
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("reason", sa.String(20), primary_key=True),
        sa.Column("refused", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("warm_idle", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("warm_target", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("warm_target")
        batch.drop_column("warm_idle")
    op.drop_table("quota_rejections")
