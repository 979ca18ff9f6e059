"""The agentfactory API as both HTTP clients see it (`client.ApiClient`, `async_client.AsyncApiClient`):
one method per route of SPEC §3 (`Endpoints`), written once: each builds a `Call` and hands it to
`_call`, which the sync client answers with the decoded body and the async client with an awaitable
of it; and what both decide alike around a request (retries, errors, log pages, waiting)."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from agentfactory import __version__
from agentfactory.client_errors import ApiError, ServerUnreachable, WaitTimeout, error_from_response, transport_cause
from agentfactory.follow import retry_after_seconds
from agentfactory.vocabulary import TERMINAL

TERMINAL_STATUSES = frozenset(TERMINAL)
MAX_LOG_PAGE = 5000
USER_AGENT = f"agentfactory-python/{__version__}"
R = TypeVar("R")
Params = list[tuple[str, str | int]]


@dataclass(frozen=True)
class Call:
    """One HTTP request of the API. `idempotent` None: GET and DELETE are, the rest are not."""

    method: str
    path: str
    params: Params = field(default_factory=list)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool | None = None

    @property
    def retryable(self) -> bool:
        return self.idempotent if self.idempotent is not None else self.method in ("GET", "DELETE")

    def httpx_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"params": self.params, "headers": self.headers}
        if self.json is not None:
            kwargs["json"] = self.json
        return kwargs


def _params(**values: Any) -> Params:
    return [(k, v) for k, v in values.items() if v is not None]


@dataclass(frozen=True)
class RetryPolicy:
    """When a request is tried again.

    A connection that could not be opened is retried (nothing was sent); one that broke after sending
    only when the request is idempotent (GET, DELETE, or an Idempotency-Key). An idempotent request
    answered with one of `statuses` (e.g. 429, 502, 503, 504) is retried too, after `Retry-After` when
    the server sent one. At most `retries` more attempts, `backoff` * 2^attempt apart.
    """

    retries: int = 2
    statuses: frozenset[int] = frozenset()
    backoff: float = 0.3

    def after_error(self, attempt: int, exc: httpx.TransportError, call: Call) -> float | None:
        sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        if attempt >= self.retries or (sent and not call.retryable):
            return None
        return self.backoff * 2**attempt

    def after_response(self, attempt: int, response: httpx.Response, call: Call) -> float | None:
        if attempt >= self.retries or not call.retryable or response.status_code not in self.statuses:
            return None
        if response.headers.get("retry-after"):
            return retry_after_seconds(response.headers["retry-after"])
        return self.backoff * 2**attempt


class Endpoints(Generic[R]):
    """The API's routes (SPEC §3), one method each; `_call` sends. A new route is one method here."""

    base_url: str
    has_api_key: bool
    retry: RetryPolicy

    def _configure(self, base_url: str, api_key: str | None, retries: int | RetryPolicy) -> dict[str, Any]:
        """Sets what both clients keep; returns the keyword arguments of their httpx client."""
        self.base_url = base_url.rstrip("/")
        self.has_api_key = bool(api_key)
        self.retry = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries=retries)
        return {"base_url": self.base_url, "headers": default_headers(api_key)}

    def _call(self, call: Call) -> R:
        raise NotImplementedError

    def create_agent(self, body: Mapping[str, Any], *, idempotency_key: str | None = None) -> R:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call(Call("POST", "/agents", json=dict(body), headers=headers, idempotent=bool(idempotency_key)))

    def list_agents(
        self,
        *,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> R:
        """`metadata`: pairs that must all match (`GET /agents?metadata.KEY=VALUE`)."""
        params = _params(status=status, limit=limit, cursor=cursor)
        params += [(f"metadata.{k}", _text(v)) for k, v in (metadata or {}).items()]
        return self._call(Call("GET", "/agents", params=params))

    def get_agent(self, agent_id: str) -> R:
        return self._call(Call("GET", f"/agents/{agent_id}"))

    def delete_agent(self, agent_id: str) -> R:
        return self._call(Call("DELETE", f"/agents/{agent_id}"))

    def set_ttl(self, agent_id: str, ttl_seconds: int) -> R:
        body = {"ttl_seconds": ttl_seconds}
        return self._call(Call("POST", f"/agents/{agent_id}/ttl", json=body, idempotent=True))

    def get_result(self, agent_id: str) -> R:
        return self._call(Call("GET", f"/agents/{agent_id}/result"))

    def list_artifacts(self, agent_id: str) -> R:
        """`{"items": [{"path", "bytes", "sha256"}], "dropped": [{"path", "bytes"}], "complete"}` (SPEC §9)."""
        return self._call(Call("GET", f"/agents/{agent_id}/artifacts"))

    def get_logs(
        self,
        agent_id: str,
        *,
        cursor: int | None = None,
        limit: int | None = None,
        stream: str | None = None,
        tail: int | None = None,
    ) -> R:
        params = _params(cursor=cursor, limit=limit, stream=stream, tail=tail)
        return self._call(Call("GET", f"/agents/{agent_id}/logs", params=params))

    def get_catalog(self) -> R:
        return self._call(Call("GET", "/catalog"))

    def create_key(self, body: Mapping[str, Any]) -> R:
        return self._call(Call("POST", "/keys", json=dict(body)))

    def list_keys(self) -> R:
        return self._call(Call("GET", "/keys"))

    def revoke_key(self, key_id: str) -> R:
        return self._call(Call("DELETE", f"/keys/{key_id}"))

    def create_webhook(self, body: Mapping[str, Any]) -> R:
        return self._call(Call("POST", "/webhooks", json=dict(body)))

    def list_webhooks(self) -> R:
        return self._call(Call("GET", "/webhooks"))

    def delete_webhook(self, webhook_id: str) -> R:
        return self._call(Call("DELETE", f"/webhooks/{webhook_id}"))

    def list_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> R:
        params = _params(status=status, limit=limit, cursor=cursor)
        return self._call(Call("GET", f"/webhooks/{webhook_id}/deliveries", params=params))

    def retry_delivery(self, webhook_id: str, delivery_id: int) -> R:
        path = f"/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"
        return self._call(Call("POST", path, idempotent=True))

    # --- what both clients decide alike around a request -------------------------------------------

    def _settle(
        self,
        call: Call,
        attempt: int,
        *,
        response: httpx.Response | None = None,
        error: httpx.TransportError | None = None,
    ) -> float:
        """After a failed attempt (an error answer or a transport failure): the seconds to wait before
        the next, or the exception to raise when there is none."""
        if error is not None:
            delay = self.retry.after_error(attempt, error, call)
            if delay is None:
                raise ServerUnreachable(self.base_url, transport_cause(error)) from error
            return delay
        assert response is not None
        delay = self.retry.after_response(attempt, response, call)
        if delay is None:
            raise missing_key_hint(error_from_response(response), self.has_api_key)
        return delay


def _text(value: Any) -> str:
    """A metadata value as the selector compares it: JSON's spelling for booleans and null."""
    if value is True or value is False:
        return "true" if value else "false"
    return "null" if value is None else str(value)


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def missing_key_hint(error: ApiError, has_api_key: bool) -> ApiError:
    if error.status == 401 and not has_api_key:
        error.hint = "no API key was given: set AGENTFACTORY_API_KEY, pass --api-key, or `agentfactory login`"
    return error


def stream_headers(last_event_id: int | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return headers


def answer(response: httpx.Response) -> Any:
    """A successful answer's decoded body (None when it has none)."""
    return response.json() if response.content else None


def log_page_limit(until: int | None, cursor: int | None) -> int:
    """The size of the next logs page: a full one, or one that does not pass seq `until`."""
    return MAX_LOG_PAGE if until is None else max(1, min(MAX_LOG_PAGE, until - (cursor or 0) - 1))


class WaitPacer:
    """Polling an agent until it is terminal: every 0.1 s at first, backing off to `poll_max`;
    `WaitTimeout` once `timeout` seconds have passed."""

    def __init__(self, agent_id: str, timeout: float | None, poll_max: float) -> None:
        self._agent_id = agent_id
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._delay = 0.1
        self._poll_max = poll_max

    def done(self, agent: dict[str, Any]) -> bool:
        """True when `agent` is terminal; raises `WaitTimeout` past the deadline."""
        if agent.get("status") in TERMINAL_STATUSES:
            return True
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise WaitTimeout(self._agent_id, self._timeout or 0.0, agent)
        return False

    def pause(self) -> float:
        """The seconds to sleep before the next poll."""
        delay = self._delay
        self._delay = min(delay * 2, self._poll_max)
        return delay if self._deadline is None else min(delay, max(0.0, self._deadline - time.monotonic()))


def events_request(
    follow: bool, last: int | None, agent_id: str | None, types: list[str] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The query and headers of `GET /events` resuming after event id `last` (None: where the server
    starts)."""
    params: dict[str, Any] = {"follow": "true" if follow else "false"}
    if agent_id:
        params["agent_id"] = agent_id
    if types:
        params["type"] = ",".join(types)
    headers = {"Accept": "text/event-stream"}
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    return params, headers


EVENTS_TIMEOUT = httpx.Timeout(10.0, read=45.0)  # the server sends a keep-alive at least every 15 s


class Reconnects:
    """A followed stream's reconnections: a growing jittered pause after each drop, and
    `ServerUnreachable` once `window` seconds pass without a connection."""

    def __init__(self, base_url: str, window: float) -> None:
        self._base_url, self._window = base_url, window
        self._down_since: float | None = None
        self._attempt = 0

    def connected(self) -> None:
        self._down_since, self._attempt = None, 0

    def dropped(self, cause: str) -> float:
        """The seconds to wait before connecting again (or ServerUnreachable)."""
        now = time.monotonic()
        self._down_since = self._down_since if self._down_since is not None else now
        if now - self._down_since > self._window:
            raise ServerUnreachable(self._base_url, f"{cause}; gave up reconnecting")
        delay = min(0.25 * 2**self._attempt, 5.0) * random.uniform(0.8, 1.2)
        self._attempt += 1
        return delay


def drop_cause(exc: httpx.TransportError | ApiError, follow: bool) -> str:
    """Why a followed stream dropped, to reconnect after; an error that reconnecting cannot mend
    (a 4xx, or any error when not following) is raised again."""
    if isinstance(exc, httpx.TransportError):
        return transport_cause(exc)
    if not follow or exc.status < 500:
        raise exc
    return f"{exc.code} ({exc.status})"
