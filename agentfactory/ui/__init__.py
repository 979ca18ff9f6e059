"""The dashboard door (SPEC §12): server-rendered pages at /ui over `agentfactory.service`.

Jinja2 templates render every page on the server; one vendored script (`static/app.js`, no build
step, no framework, no CDN) adds what must be live: the agents list's status changes (`/events`), an
agent's log tail (`/agents/{id}/stream`, windowed), and the buttons, which call the HTTP API itself
with the session cookie and the session's CSRF header. The session is `service.auth`'s, so the API's
edge and these pages share one notion of who is signed in."""

from __future__ import annotations

from fastapi import FastAPI

from agentfactory.ui.pages import STATIC_DIR, StaticAssets, router


def mount_ui(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui/static", StaticAssets(directory=STATIC_DIR), name="ui-static")
