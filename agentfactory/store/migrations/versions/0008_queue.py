"""The queue (SPEC §10): agents.queue_round, queue_deadline, dequeued_at; the capacity lock's row

Revision ID: 0008
Revises: 0011 (main's head when this branch merged main)
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agents", sa.Column("queue_round", sa.Integer(), nullable=True))
    op.add_column("agents", sa.Column("queue_deadline", sa.Float(), nullable=True))
    op.add_column("agents", sa.Column("dequeued_at", sa.Float(), nullable=True))
    op.create_index("ix_agents_status_queue", "agents", ["status", "queue_round", "pk"])
    op.create_index("ix_agents_finished_at", "agents", ["finished_at"])
    # Admissions and the dispatcher write this row first: on SQLite that takes the database's
    # write lock before the counts are read, so the cluster's capacity cannot be raced.
    op.execute("INSERT INTO cursors (name, value) VALUES ('capacity', 0)")


def downgrade() -> None:
    op.execute("DELETE FROM cursors WHERE name = 'capacity'")
    op.drop_index("ix_agents_finished_at", table_name="agents")
    op.drop_index("ix_agents_status_queue", table_name="agents")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("dequeued_at")
        batch.drop_column("queue_deadline")
        batch.drop_column("queue_round")
