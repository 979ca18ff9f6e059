"""The agentfactory HTTP client (synchronous), used by the command line and by the SDK.

- `ApiClient`: the API's routes (`endpoints.Endpoints`, written once for both clients) over an
  httpx.Client; every non-2xx answer becomes `ApiError`, every
  transport failure `ServerUnreachable` (`client_errors`). Idempotent calls are retried (`RetryPolicy`).
- `AgentFollower`: follows one agent's stream to its `end` event, delivering each log line exactly once
  and in order across dropped connections (reconnect with `Last-Event-ID`, backoff, gap back-fill); the
  bookkeeping is `follow.FollowCursor` and `follow.Reconnect`, shared with the async follower.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from agentfactory.client_errors import ApiError, ClientError, ServerUnreachable, WaitTimeout, transport_cause
from agentfactory.endpoints import (
    EVENTS_TIMEOUT,
    MAX_LOG_PAGE,
    TERMINAL_STATUSES,
    Call,
    Endpoints,
    Reconnects,
    RetryPolicy,
    WaitPacer,
    answer,
    drop_cause,
    error_from_response,
    events_request,
    log_page_limit,
    missing_key_hint,
    stream_headers,
)
from agentfactory.follow import Backfill, End, FollowCursor, Line, Reconnect, Status
from agentfactory.sse_client import SSEDecoder, SSEEvent, iter_sse, split_lines

__all__ = [
    "MAX_LOG_PAGE",
    "TERMINAL_STATUSES",
    "AgentFollower",
    "ApiClient",
    "ApiError",
    "Call",
    "ClientError",
    "Endpoints",
    "RetryPolicy",
    "SSEDecoder",
    "SSEEvent",
    "ServerUnreachable",
    "WaitTimeout",
    "agent_exit_code",
    "iter_sse",
    "split_lines",
]


class ApiClient(Endpoints[Any]):
    """Synchronous client of the agentfactory API. Use as a context manager (it owns an httpx.Client)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        retries: int | RetryPolicy = 2,
        transport: httpx.BaseTransport | None = None,
    ):
        options = self._configure(base_url, api_key, retries)
        self._http = httpx.Client(**options, timeout=httpx.Timeout(timeout), transport=transport)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, call: Call) -> Any:
        """Sends `call` (retrying as `self.retry` allows) and returns its decoded JSON body."""
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **call.httpx_kwargs())
            except httpx.TransportError as exc:
                delay = self._settle(call, attempt, error=exc)
            else:
                if response.status_code < 400:
                    return answer(response)
                delay = self._settle(call, attempt, response=response)
            time.sleep(delay)
            attempt += 1

    def upload(self, chunks: Iterable[bytes], *, gzip: bool = True, timeout: float = 600.0) -> dict[str, Any]:
        """POST /uploads with a tar (or tar.gz) body streamed from `chunks` (SPEC §9); not retried:
        the chunks are consumed."""
        content_type = "application/gzip" if gzip else "application/x-tar"
        try:
            response = self._http.post(
                "/uploads", content=chunks, headers={"Content-Type": content_type}, timeout=timeout
            )
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, transport_cause(exc)) from exc
        if response.status_code >= 400:
            raise missing_key_hint(error_from_response(response), self.has_api_key)
        result: dict[str, Any] = response.json()
        return result

    def download_artifact(self, agent_id: str, path: str, dest: Path, *, timeout: float = 600.0) -> str:
        """Stream one artifact into `dest` (made with its parents); returns the sha256 of what was written."""
        digest = hashlib.sha256()
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._http.stream("GET", f"/agents/{agent_id}/artifacts/{quote(path)}", timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise missing_key_hint(error_from_response(response), self.has_api_key)
                with open(dest, "wb") as out:
                    for data in response.iter_bytes(1 << 20):
                        digest.update(data)
                        out.write(data)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, transport_cause(exc)) from exc
        return digest.hexdigest()

    def request(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        """Any route, by method and path (`params`, `json`, `headers` as in `Call`)."""
        return self._call(Call(method, path, idempotent=idempotent, **kwargs))

    def iter_log_pages(
        self, agent_id: str, *, after: int | None = None, stream: str | None = None, until: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The logs pages after `after` (sized not to pass `until`), to the current end: a page without
        lines, or the `complete` one (the agent finished and nothing follows)."""
        cursor = after
        while True:
            page = self.get_logs(agent_id, cursor=cursor, limit=log_page_limit(until, cursor), stream=stream)
            yield page
            if not page.get("lines") or page.get("complete") or page.get("next_cursor") is None:
                return
            cursor = int(page["next_cursor"])

    def iter_logs(
        self, agent_id: str, *, after: int | None = None, stream: str | None = None, until: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every captured line after `after` (and before `until`), page by page, to the current end."""
        for page in self.iter_log_pages(agent_id, after=after, stream=stream, until=until):
            for line in page.get("lines") or []:
                if until is not None and line["seq"] >= until:
                    return
                yield line

    def wait_agent(self, agent_id: str, *, timeout: float | None = None, poll_max: float = 1.0) -> dict[str, Any]:
        """Polls `GET /agents/{id}` (every 0.1 s, backing off to `poll_max`) until the agent is terminal;
        `WaitTimeout` after `timeout` seconds."""
        pacer = WaitPacer(agent_id, timeout, poll_max)
        while not pacer.done(agent := self.get_agent(agent_id)):
            time.sleep(pacer.pause())
        return agent

    def iter_events(
        self,
        *,
        follow: bool,
        after: int | None = None,
        agent_id: str | None = None,
        types: list[str] | None = None,
        reconnect_window: float = 60.0,
    ) -> Iterator[dict[str, Any]]:
        """Lifecycle events from `GET /events` (the server picks the start when `after` is None).
        Following, a dropped connection is resumed with `Last-Event-ID` (no event lost or repeated)
        until `reconnect_window` seconds pass without a connection; else it ends at the log's end."""
        last = after
        reconnects = Reconnects(self.base_url, reconnect_window)
        while True:
            params, headers = events_request(follow, last, agent_id, types)
            try:
                with self._http.stream(
                    "GET", "/events", params=params, headers=headers, timeout=EVENTS_TIMEOUT
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise missing_key_hint(error_from_response(response), self.has_api_key)
                    reconnects.connected()
                    for event in iter_sse(response.iter_bytes()):
                        doc: dict[str, Any] = json.loads(event.data)
                        last = int(doc["id"])
                        yield doc
                if not follow:
                    return
                cause = "stream closed"
            except (httpx.TransportError, ApiError) as exc:
                cause = drop_cause(exc, follow)
            time.sleep(reconnects.dropped(cause))

    @contextmanager
    def stream_agent(
        self,
        agent_id: str,
        *,
        last_event_id: int | None = None,
        tail: int | None = None,
        read_timeout: float = 45.0,
    ) -> Iterator[Iterator[SSEEvent]]:
        """Opens `GET /agents/{id}/stream`; yields its events. Idle reads time out after `read_timeout`
        (the server sends a keep-alive at least every 15 s, so silence that long is a dead connection)."""
        headers = stream_headers(last_event_id)
        params = {"tail": tail} if tail is not None and last_event_id is None else {}
        timeout = httpx.Timeout(10.0, read=read_timeout)
        try:
            with self._http.stream(
                "GET", f"/agents/{agent_id}/stream", headers=headers, params=params, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise missing_key_hint(error_from_response(response), self.has_api_key)
                yield iter_sse(response.iter_bytes())
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, transport_cause(exc)) from exc


# --- following an agent ------------------------------------------------------------------------------


class AgentFollower:
    """Follows one agent's output to its end, each line exactly once and in order.

    `events()` yields `follow.Line`, `follow.Status` and, last, `follow.End`; `run()` hands them to the
    callbacks and returns the terminal agent. A dropped connection, a stream closed before `end`, or a
    5xx while the server restarts are retried with `Last-Event-ID` = the last seq delivered, with
    exponential backoff, until `reconnect_window` seconds pass without a successful connection (then
    `ServerUnreachable`). Lines the stream skipped are fetched from the logs pages. `run()` and
    `events()` may be called again after an interruption: they resume where they stopped.
    """

    def __init__(
        self,
        client: ApiClient,
        agent_id: str,
        *,
        on_line: Callable[[dict[str, Any]], None] = lambda line: None,
        on_status: Callable[[dict[str, Any]], None] = lambda agent: None,
        on_retry: Callable[[int, float, str], None] = lambda attempt, delay, cause: None,
        tail: int | None = None,
        after: int | None = None,
        reconnect_window: float = 60.0,
    ):
        self.client = client
        self.agent_id = agent_id
        self.on_line, self.on_status, self.on_retry = on_line, on_status, on_retry
        self.reconnect_window = reconnect_window
        self.cursor = FollowCursor(after=after, tail=tail)

    @property
    def last_seq(self) -> int | None:
        return self.cursor.last_seq

    @property
    def delivered(self) -> int:
        return self.cursor.delivered

    def run(self, *, max_seconds: float | None = None) -> dict[str, Any]:
        for step in self.events(max_seconds=max_seconds):
            if isinstance(step, Line):
                self.on_line(step.line)
            elif isinstance(step, Status):
                self.on_status(step.agent)
            else:
                return step.agent
        raise AssertionError("events() ends only with End or an exception")  # pragma: no cover

    def events(self, *, max_seconds: float | None = None) -> Iterator[Line | Status | End]:
        cursor = self.cursor
        policy = Reconnect(self.client.base_url, window=self.reconnect_window, max_seconds=max_seconds)
        while True:
            try:
                with self.client.stream_agent(
                    self.agent_id,
                    last_event_id=cursor.resume_id(),
                    tail=cursor.tail,
                    read_timeout=policy.read_timeout(),
                ) as events:
                    policy.connected()
                    for event in events:
                        policy.saw(event)
                        for step in cursor.steps(event):
                            if isinstance(step, Backfill):
                                lines = self.client.iter_logs(self.agent_id, after=cursor.last_seq, until=step.until)
                                for line in lines:
                                    if cursor.accept(line):
                                        yield Line(line)
                            elif isinstance(step, Line):
                                if cursor.accept(step.line):
                                    yield step
                            else:
                                yield step
                                if isinstance(step, End):
                                    return
                        if policy.out_of_time():
                            break
                cause = "stream closed before its end"
            except (ServerUnreachable, ApiError) as exc:
                cause = policy.cause_of(exc)
            delay = policy.next_delay(cause)
            self.on_retry(policy.attempt, delay, cause)
            time.sleep(delay)


#: CLI exit codes 64-78 (sysexits.h) are the CLI's own failures; an agent's verdict never uses them.
RESERVED_EXIT_CODES = range(64, 79)


def agent_exit_code(agent: dict[str, Any]) -> int:
    """The process exit code that mirrors a terminal agent (SPEC §7): 0 succeeded, 124 expired,
    130 cancelled, the agent's exit code when it failed (1 when it has none, or when it falls in
    64-78, which the CLI keeps for its own failures)."""
    status = agent.get("status")
    if status == "succeeded":
        return 0
    if status == "expired":
        return 124
    if status == "cancelled":
        return 130
    code = agent.get("exit_code")
    if isinstance(code, int) and 0 < code < 256 and code not in RESERVED_EXIT_CODES:
        return code
    return 1
