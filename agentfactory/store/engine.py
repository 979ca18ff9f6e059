"""Engine and sessions: SQLite pragmas (WAL, busy timeout) or a PostgreSQL pool; Alembic migrations."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from agentfactory.store import queries
from agentfactory.store.pgpoint import PgPointStore
from agentfactory.store.point import AgentPointReader
from agentfactory.store.tables import AgentRow

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATE_LOCK = 0x6166_6D69  # the advisory lock key replicas' migrations take turns under
MIN_FREE_BYTES = 1024 * 1024  # a SQLite database with less room than this is reported as unable to write
T = TypeVar("T")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    # Deleted and overwritten content (an agent's secrets, cleared when it ends) is zeroed in the file.
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


def store_cannot_write(exc: BaseException) -> bool:
    """Whether a failed write says the store cannot write now (full disk, I/O error, lock timeout,
    lost connection), which retrying cures, rather than that it refuses these rows."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, sa_exc.DisconnectionError, OSError)
    )


def describe_store_error(exc: BaseException) -> str:
    """The driver's own words (never SQLAlchemy's, which quote the statement's parameters)."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    return f"{type(orig).__name__}: {str(orig)[:200]}"


class Store:
    """Owns the engine; hands out sessions. Built explicitly, disposed by the app's lifespan."""

    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs["pool_size"] = 20
            kwargs["max_overflow"] = 40
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
            kwargs["pool_pre_ping"] = True
        # A failed statement's parameters (an agent's prompt and secrets) stay out of the exception,
        # and so out of the control plane's log.
        self.engine: Engine = create_engine(url, hide_parameters=True, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # The reads every API request makes, without a Session's cost (store/point.py, store/pgpoint.py).
        self.point_reader = AgentPointReader(self.engine) if self.is_sqlite else None
        self.pg_point = None if self.is_sqlite else PgPointStore(self.engine)
        self._own = threading.local()  # `autocommit`'s connection, one per thread
        self._owned: list[Any] = []  # ... all of them, closed by `dispose`
        self._owned_lock = threading.Lock()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision. On PostgreSQL, replicas that start
        together on one database take turns, under an advisory lock held by the migrating
        transaction (else two create the version table at once and one fails)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        """The Alembic revision the database is at (None: an empty database)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def call(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """`fn(session=..., **kwargs)` (a function of `queries`) in its own transaction, here."""
        with self.session() as s:
            return fn(session=s, **kwargs)

    def autocommit(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """`call`, for `fn` of ONE statement (its own transaction, atomic as it is), in one round trip
        on PostgreSQL: on this thread's own connection in autocommit, so without the pool's ping and
        without BEGIN and COMMIT (the model gateway's per-call work, on threads of its own). A
        connection the database dropped while it was idle (a restart, a failover: the statement never
        reached a live server) is replaced and the statement sent once more, as the ping would have."""
        if self.is_sqlite:
            return self.call(fn, **kwargs)
        for attempt in (1, 2):
            conn = getattr(self._own, "conn", None)
            if conn is None or conn.closed or conn.invalidated:
                conn = self._own.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                with self._owned_lock:
                    self._owned = [c for c in self._owned if not c.closed] + [conn]
            try:
                with Session(bind=conn) as s:
                    return fn(session=s, **kwargs)
            except sa_exc.DBAPIError as exc:
                if not exc.connection_invalidated or attempt == 2:
                    raise
                conn.close()
        raise AssertionError("unreachable")

    async def run(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """`call`, off the event loop: the one way async code runs a query."""
        return await asyncio.to_thread(self.call, fn, **kwargs)

    async def agent_by_pk(self, pk: int) -> AgentRow | None:
        """`queries.get_agent_by_pk`: on SQLite on the event loop (store/point.py), a hop to a
        thread costing more than the read; elsewhere through `run`."""
        if self.point_reader is not None:
            return self.point_reader.get_agent_by_pk(pk=pk)
        return await self.run(queries.get_agent_by_pk, pk=pk)

    async def queued_count(self) -> int:
        """`queries.count_queued` of every key, the same way."""
        if self.point_reader is not None:
            return self.point_reader.count_queued()
        return await self.run(queries.count_queued)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def space_problem(self) -> str | None:
        """Why a SQLite database cannot grow (its filesystem is full), or None. A full disk does
        not fail `ping`, nor a small write into pages the database already has."""
        path = self.engine.url.database if self.is_sqlite else None
        if not path or path == ":memory:":
            return None
        st = os.statvfs(Path(path).resolve().parent)
        free = st.f_bavail * st.f_frsize
        return f"its filesystem is full ({free} bytes free)" if free < MIN_FREE_BYTES else None

    def dispose(self) -> None:
        if self.point_reader is not None:
            self.point_reader.close()
        if self.pg_point is not None:
            self.pg_point.close()
        with self._owned_lock:
            owned, self._owned = self._owned, []
        for conn in owned:
            with contextlib.suppress(Exception):
                conn.close()
        self.engine.dispose()
