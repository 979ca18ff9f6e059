"""Following one agent's stream, without I/O: the state the sync and the async follower share.

`FollowCursor` turns each SSE event into steps (deliver a line, back-fill a gap from the logs pages,
report a status, end) and remembers the last seq delivered, so that each line goes out exactly once
and in order across reconnections. `Reconnect` is the retry policy: which failures are retried, how
long to wait (exponential backoff with jitter, the server's `retry:` hint, `Retry-After` on 429), and
when to give up. The followers in `client` (httpx.Client) and `async_client` (httpx.AsyncClient) only
do the I/O these two ask for.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

from agentfactory.client_errors import ApiError, ServerUnreachable
from agentfactory.sse_client import SSEEvent

STREAM_READ_TIMEOUT = 45.0  # the server sends a keep-alive at least every 15 s


@dataclass(frozen=True)
class Line:
    """A captured line to hand to the caller: {seq, ts, stream, text}."""

    line: dict[str, Any]


@dataclass(frozen=True)
class Status:
    """The agent changed status: the agent as `GET /agents/{id}` shows it."""

    agent: dict[str, Any]


@dataclass(frozen=True)
class End:
    """The agent is terminal and every line went out: the last step of a follow."""

    agent: dict[str, Any]


@dataclass(frozen=True)
class Backfill:
    """Lines the stream skipped: fetch those after `FollowCursor.last_seq` (and before `until`) from
    the logs pages and pass each through `FollowCursor.accept` before delivering it."""

    until: int | None


Step = Line | Status | End | Backfill


class FollowCursor:
    """Where a follow stands: the last seq delivered (None: nothing yet, in tail mode; 0: from the
    first line; seqs start at 1) and how many lines went out."""

    def __init__(self, *, after: int | None = None, tail: int | None = None):
        self.tail = tail
        self.last_seq: int | None = after if after is not None else (None if tail is not None else 0)
        self.delivered = 0

    def resume_id(self) -> int | None:
        """The `Last-Event-ID` to reconnect with (None: start as first asked)."""
        return self.last_seq if self.last_seq else None

    def steps(self, event: SSEEvent) -> list[Step]:
        if event.event == "log":
            line = json.loads(event.data)
            seq = int(line["seq"])
            if self.last_seq is not None:
                if seq <= self.last_seq:
                    return []
                if seq > self.last_seq + 1:
                    return [Backfill(until=seq), Line(line)]
            return [Line(line)]
        if event.event == "status":
            return [Status(json.loads(event.data))]
        if event.event == "end":
            agent: dict[str, Any] = json.loads(event.data)
            sealed = agent.get("log_lines")
            if self.last_seq is not None and isinstance(sealed, int) and self.last_seq < sealed:
                return [Backfill(until=None), End(agent)]
            return [End(agent)]
        return []

    def accept(self, line: dict[str, Any]) -> bool:
        """Whether `line` is new (then it counts as delivered): a back-filled page may repeat lines."""
        seq = int(line["seq"])
        if self.last_seq is not None and seq <= self.last_seq:
            return False
        self.last_seq = seq
        self.delivered += 1
        return True


class Reconnect:
    """The retry policy of one follow: a dropped connection, a stream closed before `end`, a 5xx
    while the server restarts, or a 429 are retried, with backoff, until `window` seconds pass without
    a successful connection (or `max_seconds` since the start); then `ServerUnreachable`."""

    def __init__(self, base_url: str, *, window: float, max_seconds: float | None):
        self.base_url = base_url
        self.window = window
        self.max_seconds = max_seconds
        self.started = time.monotonic()
        self.down_since: float | None = None
        self.attempt = 0
        self.retry_base = 0.25
        self._wait: float | None = None

    def read_timeout(self) -> float:
        if self.max_seconds is None:
            return STREAM_READ_TIMEOUT
        return max(0.1, min(STREAM_READ_TIMEOUT, self.max_seconds))

    def connected(self) -> None:
        self.down_since = None

    def saw(self, event: SSEEvent) -> None:
        self.attempt = 0
        if event.retry is not None:
            self.retry_base = max(0.05, event.retry / 1000)

    def out_of_time(self) -> bool:
        return self.max_seconds is not None and time.monotonic() - self.started > self.max_seconds

    def cause_of(self, exc: ServerUnreachable | ApiError) -> str:
        """Why the connection failed; re-raises what is not worth retrying (a 4xx other than 429)."""
        if isinstance(exc, ServerUnreachable):
            return exc.cause
        if exc.status < 500 and exc.status != 429:
            raise exc
        if exc.status == 429:  # the server is up, only asking us to slow down
            self.down_since, self._wait = None, retry_after_seconds(exc.retry_after)
        return f"{exc.code} ({exc.status})"

    def next_delay(self, cause: str) -> float:
        """Seconds to wait before the next attempt, or `ServerUnreachable` when it is time to stop."""
        now = time.monotonic()
        self.down_since = self.down_since if self.down_since is not None else now
        if now - self.down_since > self.window:
            raise ServerUnreachable(self.base_url, f"{cause}; gave up reconnecting")
        if self.max_seconds is not None and now - self.started > self.max_seconds:
            raise ServerUnreachable(self.base_url, f"{cause}; no end within {self.max_seconds:.0f}s")
        wait, self._wait = self._wait, None
        delay = wait if wait is not None else min(self.retry_base * 2**self.attempt, 5.0) * random.uniform(0.8, 1.2)
        self.attempt += 1
        return delay


def retry_after_seconds(retry_after: str | None) -> float:
    """A `Retry-After` header (seconds) as a delay between 0.1 s and 60 s; 1 s when absent or a date."""
    try:
        return min(max(float(retry_after or 1), 0.1), 60.0)
    except ValueError:
        return 1.0
