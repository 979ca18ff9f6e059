"""The dashboard's pages: sign-in and sign-out, agents, one agent, and the admin's keys, usage and system."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from agentfactory.errors import AgentFactoryError, AuthError, ForbiddenError, NotFoundError
from agentfactory.schemas import iso
from agentfactory.service import agents, dashboard, events, keys
from agentfactory.service.auth import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    UiSession,
    check_csrf,
    session_of,
    sign_in,
    sign_out,
)
from agentfactory.service.context import Services
from agentfactory.vocabulary import ACTIVE, TERMINAL, AgentStatus

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
PAGE_SIZE = 50
MAX_FORM_BYTES = 8192
# No inline script or style anywhere: the page's own files only, the API on the same origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)
templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True), auto_reload=False
)


class StaticAssets(StaticFiles):
    """The vendored script and style sheet, with the same security headers as the pages."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await super().__call__(scope, receive, with_headers)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


def to_sign_in(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse("/ui/login?" + urlencode({"next": target}), status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


def safe_next(value: str | None) -> str:
    """Only a dashboard path: never another site (an open redirect)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/agents"


def same_origin(request: Request) -> bool:
    """A browser's cross-site POST says where it came from: refuse it (SameSite=Strict aside)."""
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


async def current(request: Request) -> UiSession | None:
    return await session_of(store=services(request).store, token=request.cookies.get(SESSION_COOKIE))


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form (the edge labels every body JSON, so it is parsed here)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    return {k: v[0] for k, v in parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).items()}


def page(request: Request, session: UiSession, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return render(name, status, session=session, caller=session.caller, csrf=session.csrf, path=request.url.path,
                  **context)  # fmt: skip


# --- sign in, sign out -----------------------------------------------------------------------------


@router.get("/ui")
async def home() -> RedirectResponse:
    return RedirectResponse("/ui/agents", status_code=303)


@router.get("/ui/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    if await current(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render("login.html", next=safe_next(next), error=None)


@router.post("/ui/login")
async def login(request: Request) -> Response:
    form = await read_form(request)
    target = safe_next(form.get("next"))
    if not same_origin(request):
        return render("login.html", 403, next=target, error="refused: the sign-in came from another site")
    try:
        token, _session = await sign_in(store=services(request).store, api_key=form.get("key", ""))
    except AuthError as exc:
        return render("login.html", 401, next=target, error=exc.message)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    session = await current(request)
    if session is not None:
        form = await read_form(request)
        try:
            check_csrf(session, "POST", form.get("csrf"))
        except ForbiddenError as exc:
            return page(request, session, "error.html", 403, title="Refused", message=exc.message)
        svc = services(request)
        digest = await sign_out(store=svc.store, token=request.cookies.get(SESSION_COOKIE))
        if digest is not None:
            svc.streams.end_session(digest)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# --- agents ----------------------------------------------------------------------------------------


def parse_meta(values: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for v in values:
        k, sep, val = v.partition("=")
        if sep and k.strip():
            pairs.append((k.strip(), val.strip()))
    return pairs


@router.get("/ui/agents")
async def agents_page(
    request: Request,
    status: str | None = None,
    model: str | None = None,
    meta: Annotated[list[str] | None, Query()] = None,
    before: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    session = await current(request)
    if session is None:
        return to_sign_in(request)
    svc = services(request)
    status_filter = AgentStatus(status) if status in {str(s) for s in AgentStatus} else None
    pairs = parse_meta([m for m in meta or [] if m])
    started = time.perf_counter()
    try:
        # Live updates resume from here: an agent created while this page renders is not missed.
        events_after = await events.start_position(svc, session.caller, after=None, agent_id=None, follow=True)
        page_ = await agents.list_agents(
            svc, session.caller, status=status_filter, limit=PAGE_SIZE, cursor=before, metadata=pairs,
            model=model or None,
        )  # fmt: skip
    except AgentFactoryError as exc:
        return page(request, session, "error.html", exc.status, title="Bad filter", message=exc.message)
    server_ms = (time.perf_counter() - started) * 1000
    query = {"status": status_filter or "", "model": model or "", "meta": [f"{k}={v}" for k, v in pairs]}
    next_url = None
    if page_.next_cursor:
        next_url = "/ui/agents?" + urlencode({**query, "before": page_.next_cursor}, doseq=True)
    response = page(
        request,
        session,
        "agents.html",
        agents=[a.model_dump(mode="json") for a in page_.items],
        statuses=[str(s) for s in AgentStatus],
        models=[m.id for m in svc.catalog.models],
        filters={"status": status_filter or "", "model": model or "", "meta": "\n".join(query["meta"])},
        filter_json=json.dumps({"status": status_filter, "model": model or None, "meta": dict(pairs)}),
        first_page=before is None,
        events_after=events_after,
        next_url=next_url,
        active=ACTIVE,
    )
    response.headers["Server-Timing"] = f"list;dur={server_ms:.1f}"
    return response


@router.get("/ui/agents/{agent_id}")
async def agent_page(request: Request, agent_id: str) -> Response:
    session = await current(request)
    if session is None:
        return to_sign_in(request)
    svc = services(request)
    try:
        agent = await agents.get_agent(svc, session.caller, agent_id)
        result = await agents.get_result(svc, session.caller, agent_id)
    except NotFoundError as exc:
        return page(request, session, "error.html", 404, title="Not found", message=exc.message)
    doc = agent.model_dump(mode="json")
    return page(
        request,
        session,
        "agent.html",
        agent=doc,
        result=result.model_dump(mode="json"),
        result_json=json.dumps(result.model_dump(mode="json"), indent=2),
        artifacts=result.artifacts.items if result.artifacts is not None else None,
        dropped=result.artifacts.dropped if result.artifacts is not None else None,
        active=agent.status in ACTIVE,
        terminal=agent.status in TERMINAL,
        max_ttl=min(svc.catalog.limits.max_ttl_seconds, session.caller.max_ttl_seconds),
    )


@router.get("/ui/agents/{agent_id}/log.txt")
async def agent_log_text(request: Request, agent_id: str) -> Response:
    """The whole captured log as text (what the page's window leaves out of a huge log)."""
    session = await current(request)
    if session is None:
        return to_sign_in(request)
    svc = services(request)
    try:
        await agents.load_agent(svc, session.caller, agent_id)
    except NotFoundError as exc:
        return page(request, session, "error.html", 404, title="Not found", message=exc.message)

    async def lines() -> AsyncIterator[bytes]:
        after = 0
        while True:
            chunk = await agents.read_logs(svc, session.caller, agent_id, after=after, limit=agents.MAX_LOG_PAGE)
            if not chunk.lines:
                return
            yield "".join(f"{'E' if ln.stream == 'stderr' else ' '} {ln.text}\n" for ln in chunk.lines).encode()
            after = chunk.lines[-1].seq

    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8", headers=headers)


# --- admin -----------------------------------------------------------------------------------------


async def admin_session(request: Request) -> tuple[UiSession | None, Response | None]:
    session = await current(request)
    if session is None:
        return None, to_sign_in(request)
    if not session.caller.admin:
        message = "this page is for admin keys only"
        return None, page(request, session, "error.html", 403, title="For admins", message=message)
    return session, None


@router.get("/ui/admin/keys")
async def keys_page(request: Request) -> Response:
    session, refused = await admin_session(request)
    if session is None:
        assert refused is not None
        return refused
    svc = services(request)
    items = (await keys.list_keys(svc)).items
    return page(request, session, "keys.html", keys=[k.model_dump(mode="json") for k in items],
                models=[m.id for m in svc.catalog.models])  # fmt: skip


def bars(values: list[int], width: int = 560, height: int = 80) -> dict[str, Any]:
    """An inline SVG bar chart's geometry (no script: rendered as SVG by the template)."""
    top = max(values) if values and max(values) > 0 else 1
    step = width / max(1, len(values))
    out = []
    for i, v in enumerate(values):
        h = round(v / top * (height - 12), 1)
        out.append({"x": round(i * step + 1, 1), "y": round(height - h, 1), "w": round(max(1.0, step - 2), 1),
                    "h": h, "v": v})  # fmt: skip
    return {"width": width, "height": height, "bars": out, "max": max(values) if values else 0}


@router.get("/ui/admin/usage")
async def usage_page(request: Request, days: Annotated[int, Query(ge=1, le=90)] = 14) -> Response:
    session, refused = await admin_session(request)
    if session is None:
        assert refused is not None
        return refused
    usage = await dashboard.usage(services(request), days=days)
    labels = [iso(b) or "" for b in usage.buckets]
    charts = [
        {
            "key": k,
            "totals": k.totals,
            "series": [
                ("agents", "agents", bars(k.agents)),
                ("failures", "failures", bars(k.failures)),
                ("tokens", "tokens", bars(k.tokens)),
                ("quota rejections", "rejections", bars(k.rejections)),
            ],
        }
        for k in usage.keys
    ]
    first, last = (labels[0], labels[-1]) if labels else ("", "")
    bucket = "hour" if usage.bucket_seconds == dashboard.HOUR else "day"
    return page(request, session, "usage.html", days=days, charts=charts, first=first, last=last, bucket=bucket)


@router.get("/ui/admin/system")
async def system_page(request: Request) -> Response:
    session, refused = await admin_session(request)
    if session is None:
        assert refused is not None
        return refused
    fleet = await dashboard.fleet(services(request), session.caller)
    return page(request, session, "system.html", fleet=fleet, statuses=ACTIVE)
