"""What routes get from the app: the services and the caller the edge middleware authenticated."""

from __future__ import annotations

from fastapi import Depends, Request, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agentfactory.errors import AuthError, ForbiddenError
from agentfactory.service.auth import Caller
from agentfactory.service.context import Services

bearer = HTTPBearer(auto_error=False, description="an agentfactory API key")


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services_ws(websocket: WebSocket) -> Services:
    services: Services = websocket.app.state.services
    return services


async def get_caller(request: Request, _creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    caller: Caller | None = request.scope.get("state", {}).get("caller")
    if caller is None:
        raise AuthError("missing Authorization: Bearer <api key>")
    return caller


async def require_admin(caller: Caller = Depends(get_caller)) -> Caller:
    if not caller.admin:
        raise ForbiddenError("this route is for admin keys only")
    return caller
