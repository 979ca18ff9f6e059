"""What a test reads or plants in a server's database, on SQLite or PostgreSQL alike (the run's choice,
AGENTFACTORY_TEST_DATABASE): the same SQL through SQLAlchemy, never the SQLite file opened by hand."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, text


def rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows `sql` selects in the database at `url` (a server's AGENTFACTORY_DATABASE_URL)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


@contextmanager
def inserts_refused(url: str, table: str, message: str = "refused") -> Iterator[None]:
    """While inside: every INSERT into `table` fails in the database itself (a trigger), as a full or
    broken database would refuse it."""
    engine = create_engine(url)
    name = f"refuse_{table}"
    sqlite = url.startswith("sqlite")
    with engine.begin() as conn:
        if sqlite:
            conn.execute(
                text(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END")
            )
        else:
            conn.execute(
                text(
                    f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
                    f"$$ BEGIN RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation'; END $$"
                )
            )
            conn.execute(text(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER {name}" if sqlite else f"DROP TRIGGER {name} ON {table}"))
            if not sqlite:
                conn.execute(text(f"DROP FUNCTION {name}()"))
        engine.dispose()
