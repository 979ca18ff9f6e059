"""What the clients (`client`, `async_client`, the SDK) raise, and how an HTTP answer becomes one."""

from __future__ import annotations

from typing import Any

import httpx


class ClientError(Exception):
    """Base of what the client reports to its caller."""


class ApiError(ClientError):
    """The server answered with an error envelope (or at least a non-2xx status).

    `code` is the envelope's `error.code` (`E_NOT_FOUND`, `E_SCHEMA`, ... SPEC §3), `status` the HTTP
    status, `request_id` the id to quote in a bug report, `retry_after` the `Retry-After` header.
    """

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


class WaitTimeout(ClientError):
    """`wait(timeout=...)` ran out before the agent finished; `agent` is the last state seen."""

    def __init__(self, agent_id: str, timeout: float, agent: dict[str, Any]):
        super().__init__(f"agent {agent_id} is still {agent.get('status')} after {timeout:g}s")
        self.agent_id = agent_id
        self.timeout = timeout
        self.agent = agent


def error_from_response(response: httpx.Response) -> ApiError:
    """A non-2xx answer as an `ApiError`: the envelope's code and message when there is one."""
    request_id = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        request_id = body.get("request_id")
        code, message, details = str(err.get("code", "E_HTTP")), str(err.get("message", "")), err.get("details")
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


def transport_cause(exc: httpx.TransportError) -> str:
    """A transport failure in a few words (`Connection refused`, `ReadTimeout`)."""
    text = str(exc).strip() or type(exc).__name__
    return text.split("] ", 1)[1] if text.startswith("[Errno") and "] " in text else text
