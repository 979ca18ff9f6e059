"""ui_sessions (the dashboard's server-side sign-ins) and agents(key_id, pk) for its keyset pages

Revision ID: 0011
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_ui_sessions_key_id", "ui_sessions", ["key_id"])
    op.create_index("ix_agents_key_pk", "agents", ["key_id", "pk"])


def downgrade() -> None:
    op.drop_index("ix_agents_key_pk", table_name="agents")
    op.drop_index("ix_ui_sessions_key_id", table_name="ui_sessions")
    op.drop_table("ui_sessions")
