"""Upgrading a database made by an older release keeps every captured line."""

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from agentfactory.store import Store, queries
from agentfactory.store.engine import MIGRATIONS
from tests.support.postgres import LocalPostgres


def test_lines_stored_one_per_row_survive_the_upgrade_to_chunks(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text("INSERT INTO log_lines (agent_pk, seq, ts, stream, text) VALUES (7, :seq, 1.5, :stream, :text)"),
            [{"seq": i, "stream": 1 if i % 3 else 2, "text": f"line {i}"} for i in range(1, 11)],
        )
    store.migrate()
    with store.session() as s:
        lines = queries.read_log_lines(session=s, agent_pk=7, after=0, limit=100)
        assert [(seq, stream, t) for seq, _, stream, t in lines] == [
            (i, 1 if i % 3 else 2, f"line {i}") for i in range(1, 11)
        ]
        assert [t for *_, t in queries.read_log_lines(session=s, agent_pk=7, after=4, limit=3, stream=1)] == [
            "line 5",
            "line 7",
            "line 8",
        ]
        assert queries.last_log_seq(session=s, agent_pk=7) == 10
        assert queries.last_stderr_line(session=s, agent_pk=7) == "line 9"
    store.dispose()


def test_pages_cut_chunks_at_any_seq(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'new.db'}")
    store.migrate()
    chunks = [(1, 1, 4), (5, 2, 1), (6, 1, 300), (306, 2, 2)]  # first_seq, stream, lines
    with store.session() as s:
        for first, stream, n in chunks:
            s.execute(
                text(
                    "INSERT INTO log_chunks (agent_pk, last_seq, first_seq, ts, stream, text) "
                    "VALUES (1, :last, :first, 2.0, :stream, :text)"
                ),
                {
                    "last": first + n - 1,
                    "first": first,
                    "stream": stream,
                    "text": "\n".join(f"l{i}" for i in range(first, first + n)),
                },
            )
    with store.session() as s:
        every = []
        after = 0
        while page := queries.read_log_lines(session=s, agent_pk=1, after=after, limit=7):
            every += page
            after = page[-1][0]
        assert [seq for seq, *_ in every] == list(range(1, 308))
        assert all(t == f"l{seq}" for seq, _, _, t in every)
        stderr = queries.read_log_lines(session=s, agent_pk=1, after=0, limit=10, stream=2)
        assert [seq for seq, *_ in stderr] == [5, 306, 307]
        assert queries.read_log_lines(session=s, agent_pk=1, after=2, limit=3) == [
            (3, 2.0, 1, "l3"),
            (4, 2.0, 1, "l4"),
            (5, 2.0, 2, "l5"),
        ]
    store.dispose()


def test_the_migrations_form_one_chain() -> None:
    """Two branches each chaining a revision after the same parent leave two heads, and then no
    server can start ("Multiple head revisions"): the merge must re-chain them."""
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert len(ScriptDirectory.from_config(cfg).get_heads()) == 1


def test_replicas_migrating_one_fresh_postgresql_database_at_once_take_turns(postgres: LocalPostgres) -> None:
    """Replicas started together (make up-ha, compose) all migrate: none may fail on the version table."""
    url = postgres.new_database("migrate")
    errors: list[str] = []

    def migrate() -> None:
        store = Store(url)
        try:
            store.migrate()
        except Exception as exc:
            errors.append(repr(exc)[:300])
        finally:
            store.dispose()

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert Store(url).revision() is not None
