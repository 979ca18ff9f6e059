"""The reads every API request makes on PostgreSQL, one round trip each: the key's shared rate
bucket (SPEC §13), `GET /agents/{id}`'s row, and the key itself when the auth cache has let it go.

Through a Session each costs a pool checkout with its liveness ping, BEGIN, the statements and
COMMIT: five round trips for the bucket (SELECT … FOR UPDATE, then UPDATE), four for the row, and
the ORM's CPU, on a thread that takes the GIL back from the event loop after each. When the loop
is busy (a flooding agent on the gateway, SPEC §14) every round trip waits for it and for a
PostgreSQL backend to be scheduled, so a request's latency grows with their number (measured:
three quarters of a slow `GET`'s time). Here: async connections of this reader's own, in
autocommit, on the event loop itself; the bucket is taken by one UPDATE under its row lock (the
arithmetic of `queries.take_rate_token`, which still creates a key's row on first use), the row
read by one SELECT. A connection the database dropped while idle (a restart, a failover) is
replaced and the statement sent once more, as the pool's ping would have found it dead first.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import JSON, inspect
from sqlalchemy.engine import Engine

from agentfactory.store.tables import AgentRow, ApiKeyRow

T = TypeVar("T", AgentRow, ApiKeyRow)

KEEP_CONNECTIONS = 8  # idle connections kept; more are opened while more requests read at once

# One statement: the row lock is taken by the CTE, so the UPDATE (and its RETURNING) applies to the
# newest version of the bucket, however many replicas take from it at once. Whole tokens only: a
# replica that takes several spends them itself (service/auth.py's SharedRateLimiter).
TAKE_RATE_TOKENS = """
WITH locked AS (
    SELECT key_id, tokens, updated_at, extract(epoch FROM clock_timestamp())::float8 AS now
    FROM rate_buckets WHERE key_id = %(key_id)s FOR UPDATE
), refilled AS (
    SELECT key_id, now, least(%(per_minute)s, tokens + greatest(0.0, now - updated_at) * %(rate)s) AS tokens
    FROM locked
), granted AS (
    SELECT key_id, now, tokens, CASE WHEN tokens >= 1 THEN least(%(want)s, floor(tokens)) ELSE 0 END AS n
    FROM refilled
)
UPDATE rate_buckets AS b SET tokens = g.tokens - g.n, updated_at = g.now
FROM granted AS g WHERE b.key_id = g.key_id
RETURNING g.n, g.tokens
"""


@dataclass(frozen=True)
class _Select(Generic[T]):
    cls: type[T]
    sql: str
    attrs: list[tuple[str, bool]]  # (attribute, is JSON) in the order of the SELECT's columns


def _select(cls: type[T], where: str) -> _Select[T]:
    mapper = inspect(cls)
    attrs = [(attr.key, isinstance(attr.columns[0].type, JSON)) for attr in mapper.column_attrs]
    columns = ", ".join(f'"{attr.columns[0].name}"' for attr in mapper.column_attrs)
    return _Select(cls, f"SELECT {columns} FROM {cls.__tablename__} WHERE {where}", attrs)


class PgPointStore:
    """Async, on the event loop's own thread: no hop to a thread and back, no GIL handed over."""

    def __init__(self, engine: Engine, keep: int = KEEP_CONNECTIONS):
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._keep = keep
        # A connection belongs to the event loop it was made on: idle ones are kept per loop.
        self._idle: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._agent = _select(AgentRow, "id = %(agent_id)s")
        self._agent_of_key = _select(AgentRow, "id = %(agent_id)s AND key_id = %(key_id)s")
        self._api_key = _select(ApiKeyRow, "key_hash = %(key_hash)s")

    async def take_rate_tokens(self, *, key_id: str, per_minute: int, want: int) -> tuple[int, float] | None:
        """Up to `want` whole tokens from the key's bucket: (how many, the bucket's tokens before), or
        None when the key has no bucket yet."""
        params = {"key_id": key_id, "per_minute": float(per_minute), "rate": per_minute / 60.0, "want": want}
        found = await self._fetch(TAKE_RATE_TOKENS, params)
        if not found:
            return None
        return int(found[0][0]), float(found[0][1])

    async def get_agent(self, *, agent_id: str, key_id: str | None = None) -> AgentRow | None:
        """The agent, or None; with key_id, only when that key owns it (as `queries.get_agent`)."""
        if key_id is None:
            return await self._one(self._agent, {"agent_id": agent_id})
        return await self._one(self._agent_of_key, {"agent_id": agent_id, "key_id": key_id})

    async def get_api_key_by_hash(self, *, key_hash: str) -> ApiKeyRow | None:
        """As `queries.get_api_key_by_hash` (an API request whose key the auth cache does not hold)."""
        return await self._one(self._api_key, {"key_hash": key_hash})

    async def _one(self, select: _Select[T], params: dict[str, Any]) -> T | None:
        found = await self._fetch(select.sql, params)
        if not found:
            return None
        values = {
            attr: (json.loads(value) if is_json and isinstance(value, (str, bytes)) else value)
            for (attr, is_json), value in zip(select.attrs, found[0], strict=True)
        }
        return select.cls(**values)

    async def _fetch(self, statement: str, params: dict[str, Any]) -> list[Any]:
        import psycopg

        conn, fresh = await self._checkout()
        try:
            try:
                cur = await conn.execute(statement, params)
                rows = await cur.fetchall()
            except psycopg.OperationalError:
                if fresh or not (conn.closed or conn.broken):
                    raise
                self._discard(conn)  # the database dropped it while it was idle: once more, on a new one
                conn, fresh = await self._connect(), True
                cur = await conn.execute(statement, params)
                rows = await cur.fetchall()
        except BaseException:  # failed, or cancelled mid-statement: the connection's state is unknown
            self._discard(conn)
            raise
        idle = self._idle_here()
        if len(idle) < self._keep and not conn.closed:
            idle.append(conn)
        else:
            self._discard(conn)
        return list(rows)

    async def _connect(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)

    def _idle_here(self) -> list[Any]:
        loop = asyncio.get_running_loop()
        with self._lock:
            idle = self._idle.get(loop)
            if idle is None:
                idle = self._idle[loop] = []
            return idle

    async def _checkout(self) -> tuple[Any, bool]:
        idle = self._idle_here()
        if idle:
            return idle.pop(), False
        return await self._connect(), True

    def _discard(self, conn: Any) -> None:
        if conn.closed:
            return
        task = asyncio.get_running_loop().create_task(conn.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def close(self) -> None:
        with self._lock:
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.pgconn.finish()  # its loop may be gone: closed at the socket, synchronously
