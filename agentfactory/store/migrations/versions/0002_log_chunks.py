"""log lines stored a chunk (one read of one stream) per row

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_chunks",
        sa.Column("agent_pk", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("stream", sa.SmallInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("agent_pk", "last_seq"),
    )
    # every stored line becomes a chunk of one: nothing captured before the upgrade is lost
    op.execute(
        "INSERT INTO log_chunks (agent_pk, last_seq, first_seq, ts, stream, text) "
        "SELECT agent_pk, seq, seq, ts, stream, text FROM log_lines"
    )
    op.drop_table("log_lines")


def downgrade() -> None:
    op.create_table(
        "log_lines",
        sa.Column("agent_pk", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("stream", sa.SmallInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("agent_pk", "seq"),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT agent_pk, first_seq, ts, stream, text FROM log_chunks")).all()
    insert = sa.text("INSERT INTO log_lines (agent_pk, seq, ts, stream, text) VALUES (:a, :s, :t, :st, :x)")
    for agent_pk, first_seq, ts, stream, text in rows:
        params = [
            {"a": agent_pk, "s": first_seq + i, "t": ts, "st": stream, "x": line}
            for i, line in enumerate(text.split("\n"))
        ]
        conn.execute(insert, params)
    op.drop_table("log_chunks")
