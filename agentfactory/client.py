"""The agentfactory HTTP client used by the command line: requests, errors, and the resumable SSE follow.

Three layers, each usable alone:

- `SSEDecoder` / `iter_sse`: a Server-Sent Events parser that follows the WHATWG algorithm on raw bytes
  (lines end at CRLF, LF or CR only, so a U+2028 or NEL inside a data line is text, not a line break).
- `ApiClient`: one method per route of SPEC §3; every non-2xx answer becomes `ApiError`, every transport
  failure `ServerUnreachable`.
- `AgentFollower`: follows one agent's stream to its `end` event, delivering each log line exactly once
  and in order across dropped connections (reconnect with `Last-Event-ID`, backoff, gap back-fill).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from agentfactory.sse_client import SSEDecoder, SSEEvent, iter_sse, split_lines
from agentfactory.vocabulary import TERMINAL

__all__ = ["SSEDecoder", "SSEEvent", "iter_sse", "split_lines"]

TERMINAL_STATUSES = frozenset(TERMINAL)
MAX_LOG_PAGE = 5000


class ClientError(Exception):
    """Base of what the client reports to its caller."""


class ApiError(ClientError):
    """The server answered with an error envelope (or at least a non-2xx status)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        request_id: str | None = None,
        retry_after: str | None = None,
    ):
        super().__init__(f"{code}: {message} ({status})")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.request_id = request_id
        self.retry_after = retry_after
        self.hint: str | None = None


class ServerUnreachable(ClientError):
    """No HTTP answer: connection refused, DNS failure, timeout, connection dropped."""

    def __init__(self, url: str, cause: str):
        super().__init__(f"cannot reach {url} ({cause})")
        self.url = url
        self.cause = cause


# --- Server-Sent Events ------------------------------------------------------------------------------


def _error_from(response: httpx.Response) -> ApiError:
    request_id = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        request_id = body.get("request_id")
        code, message, details = (
            str(err.get("code", "E_HTTP")),
            str(err.get("message", "")),
            err.get("details"),
        )
    else:
        code, message, details = f"HTTP {response.status_code}", response.reason_phrase or "error", None
    return ApiError(
        response.status_code,
        code,
        message,
        details=details,
        request_id=request_id,
        retry_after=response.headers.get("retry-after"),
    )


class ApiClient:
    """Synchronous client of the agentfactory API. Use as a context manager (it owns an httpx.Client)."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 30.0, retries: int = 2):
        self.base_url = base_url.rstrip("/")
        self.has_api_key = bool(api_key)
        self.retries = retries
        headers = {"Accept": "application/json", "User-Agent": "agentfactory-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout))

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        """Sends a request and returns its decoded JSON body.

        A connection that could not be opened is retried (nothing was sent); one that broke after
        sending is retried only when the request is idempotent (GET, DELETE, or an Idempotency-Key).
        """
        if idempotent is None:
            idempotent = method in ("GET", "DELETE")
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
                break
            except httpx.TransportError as exc:
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt >= self.retries or (sent and not idempotent):
                    raise ServerUnreachable(self.base_url, _cause(exc)) from exc
                time.sleep(0.3 * 2**attempt)
        if response.status_code >= 400:
            error = _error_from(response)
            if error.status == 401 and not self.has_api_key:
                error.hint = "no API key was given: set AGENTFACTORY_API_KEY or pass --api-key"
            raise error
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def create_agent(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        idempotent = idempotency_key is not None
        return self.request("POST", "/agents", json=body, headers=headers, idempotent=idempotent)

    def list_agents(self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None) -> Any:
        return self.get("/agents", status=status, limit=limit, cursor=cursor)

    def get_agent(self, agent_id: str) -> dict[str, Any]:
        return self.get(f"/agents/{agent_id}")

    def delete_agent(self, agent_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/agents/{agent_id}")

    def set_ttl(self, agent_id: str, ttl_seconds: int) -> dict[str, Any]:
        return self.request("POST", f"/agents/{agent_id}/ttl", json={"ttl_seconds": ttl_seconds}, idempotent=True)

    def get_result(self, agent_id: str) -> dict[str, Any]:
        return self.get(f"/agents/{agent_id}/result")

    def get_logs(
        self, agent_id: str, *, cursor: int | None = None, limit: int | None = None, stream: str | None = None
    ) -> dict[str, Any]:
        return self.get(f"/agents/{agent_id}/logs", cursor=cursor, limit=limit, stream=stream)

    def iter_log_pages(
        self, agent_id: str, *, after: int | None = None, stream: str | None = None, until: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The logs pages after `after` (sized not to pass `until`), to the current end: a page without
        lines, or the `complete` one (the agent finished and nothing follows)."""
        cursor = after
        while True:
            limit = MAX_LOG_PAGE if until is None else max(1, min(MAX_LOG_PAGE, until - (cursor or 0) - 1))
            page = self.get_logs(agent_id, cursor=cursor, limit=limit, stream=stream)
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

    def get_catalog(self) -> dict[str, Any]:
        return self.get("/catalog")

    def create_key(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/keys", json=body)

    def list_keys(self) -> Any:
        return self.get("/keys")

    def revoke_key(self, key_id: str) -> Any:
        return self.request("DELETE", f"/keys/{key_id}")

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
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        params = {"tail": tail} if tail is not None and last_event_id is None else {}
        timeout = httpx.Timeout(10.0, read=read_timeout)
        try:
            with self._http.stream(
                "GET", f"/agents/{agent_id}/stream", headers=headers, params=params, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                yield iter_sse(response.iter_bytes())
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, _cause(exc)) from exc


def _cause(exc: httpx.TransportError) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.split("] ", 1)[1] if text.startswith("[Errno") and "] " in text else text


# --- following an agent ------------------------------------------------------------------------------


class AgentFollower:
    """Follows one agent's output to its end, each line exactly once and in order.

    `run()` returns the terminal agent from the `end` event. A dropped connection, a stream closed
    before `end`, or a 5xx while the server restarts are retried with `Last-Event-ID` = the last seq
    delivered, with exponential backoff, until `reconnect_window` seconds pass without a successful
    connection (then `ServerUnreachable`). Lines the stream skipped are fetched from the logs pages.
    `run()` may be called again after an interruption: it resumes where it stopped.
    """

    def __init__(
        self,
        client: ApiClient,
        agent_id: str,
        *,
        on_line: Callable[[dict[str, Any]], None],
        on_status: Callable[[dict[str, Any]], None] = lambda agent: None,
        on_retry: Callable[[int, float, str], None] = lambda attempt, delay, cause: None,
        tail: int | None = None,
        reconnect_window: float = 60.0,
    ):
        self.client = client
        self.agent_id = agent_id
        self.on_line, self.on_status, self.on_retry = on_line, on_status, on_retry
        self.tail = tail
        self.reconnect_window = reconnect_window
        # None: nothing seen yet in tail mode; 0: from the first line. Seqs start at 1.
        self.last_seq: int | None = None if tail is not None else 0
        self.delivered = 0

    def run(self, *, max_seconds: float | None = None) -> dict[str, Any]:
        started = time.monotonic()
        down_since: float | None = None
        attempt = 0
        retry_base = 0.25
        while True:
            wait: float | None = None
            try:
                resume = self.last_seq if self.last_seq else None
                read_timeout = 45.0 if max_seconds is None else max(0.1, min(45.0, max_seconds))
                with self.client.stream_agent(
                    self.agent_id, last_event_id=resume, tail=self.tail, read_timeout=read_timeout
                ) as events:
                    down_since = None
                    for event in events:
                        attempt = 0
                        if event.retry is not None:
                            retry_base = max(0.05, event.retry / 1000)
                        end = self._handle(event)
                        if end is not None:
                            return end
                        if max_seconds is not None and time.monotonic() - started > max_seconds:
                            break
                cause = "stream closed before its end"
            except ServerUnreachable as exc:
                cause = exc.cause
            except ApiError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise
                cause = f"{exc.code} ({exc.status})"
                if exc.status == 429:  # the server is up, only asking us to slow down
                    down_since, wait = None, _seconds(exc.retry_after)
            now = time.monotonic()
            down_since = down_since if down_since is not None else now
            if now - down_since > self.reconnect_window:
                raise ServerUnreachable(self.client.base_url, f"{cause}; gave up reconnecting")
            if max_seconds is not None and now - started > max_seconds:
                raise ServerUnreachable(self.client.base_url, f"{cause}; no end within {max_seconds:.0f}s")
            delay = wait if wait is not None else min(retry_base * 2**attempt, 5.0) * random.uniform(0.8, 1.2)
            attempt += 1
            self.on_retry(attempt, delay, cause)
            time.sleep(delay)

    def _handle(self, event: SSEEvent) -> dict[str, Any] | None:
        if event.event == "log":
            self._deliver(json.loads(event.data))
        elif event.event == "status":
            self.on_status(json.loads(event.data))
        elif event.event == "end":
            agent: dict[str, Any] = json.loads(event.data)
            sealed = agent.get("log_lines")
            if self.last_seq is not None and isinstance(sealed, int) and self.last_seq < sealed:
                self._backfill(until=None)
            return agent
        return None

    def _deliver(self, line: dict[str, Any]) -> None:
        seq = int(line["seq"])
        if self.last_seq is not None:
            if seq <= self.last_seq:
                return
            if seq > self.last_seq + 1:
                self._backfill(until=seq)
        self.on_line(line)
        self.last_seq = seq
        self.delivered += 1

    def _backfill(self, *, until: int | None) -> None:
        for line in self.client.iter_logs(self.agent_id, after=self.last_seq, until=until):
            if self.last_seq is None or line["seq"] > self.last_seq:
                self.on_line(line)
                self.last_seq = int(line["seq"])
                self.delivered += 1


def _seconds(retry_after: str | None) -> float:
    try:
        return min(max(float(retry_after or 1), 0.1), 60.0)
    except ValueError:
        return 1.0


def agent_exit_code(agent: dict[str, Any]) -> int:
    """The process exit code that mirrors a terminal agent (SPEC §7)."""
    status = agent.get("status")
    if status == "succeeded":
        return 0
    if status == "expired":
        return 124
    if status == "cancelled":
        return 130
    code = agent.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else 1
