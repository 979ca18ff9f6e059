"""The gateway's answers in the contract's error envelope, and its socket's start-up check."""

from __future__ import annotations

import socket
import stat
from pathlib import Path
from typing import Any

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from agentfactory.gateway.ledger import AgentGrant
from agentfactory.gateway.providers import GatewayError


def budget_spent(agent: AgentGrant, why: str) -> GatewayError:
    return GatewayError(
        429,
        "E_BUDGET",
        f"token budget spent: agent {agent.id} used {agent.tokens_used} of {agent.token_budget} tokens; {why}",
        outcome="budget",
    )


def error_response(err: GatewayError) -> web.Response:
    headers = {"Retry-After": err.retry_after} if err.retry_after else None
    response = web.json_response(
        {"error": {"code": err.code, "message": err.message}}, status=err.status, headers=headers
    )
    # A refused request's connection is closed: a flood gets no keep-alive, an unread body no drain.
    response.force_close()
    return response


_HTTP_CODES = {404: "E_NOT_FOUND", 405: "E_NOT_FOUND", 413: "E_TOO_LARGE"}


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals (unknown route, wrong method) in the same JSON envelope."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "E_SCHEMA" if exc.status < 500 else "E_INTERNAL")
        response = web.json_response({"error": {"code": code, "message": exc.reason}}, status=exc.status)
        response.force_close()
        return response


def remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a previous run; refuse to take over a live one or a non-socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise RuntimeError(f"another model gateway is serving on {path}")


def make_traversable(directory: Path, log: FilteringBoundLogger) -> None:
    """Agents run as a non-root user: they must be able to traverse the mounted socket directory."""
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o005 == 0o005:
        return
    try:
        directory.chmod(mode | 0o755)
    except PermissionError:
        log.warning("gateway_dir_not_traversable", directory=str(directory), mode=oct(mode))
