"""An agent's artifacts as MCP resources (SPEC §9): listed for the caller's newest agents, described
by a template, read bounded like the read_artifact tool.

A URI is `agentfactory://agents/{agent_id}/artifacts/{+path}`, the path percent-encoded as in a URL
(its "/" kept). A read answers the first MAX_ARTIFACT_READ bytes: as text when they are UTF-8, else
as a base64 `blob`; `_meta` says the whole size, the sha256 and whether it was cut.
"""

from __future__ import annotations

import base64
import codecs
import mimetypes
import re
from urllib.parse import quote, unquote

import mcp_types as types

from agentfactory.mcp.tools import MAX_ARTIFACT_READ
from agentfactory.service import files
from agentfactory.service.auth import Caller
from agentfactory.service.context import Services

ARTIFACT_URI = re.compile(r"^agentfactory://agents/(?P<agent_id>[^/?#]+)/artifacts/(?P<path>[^?#]+)$")
ARTIFACT_URI_TEMPLATE = "agentfactory://agents/{agent_id}/artifacts/{+path}"
RECENT_AGENTS = 20
MAX_LISTED = 200

TEMPLATE = types.ResourceTemplate(
    name="agent-artifact",
    title="An agent's artifact",
    uri_template=ARTIFACT_URI_TEMPLATE,
    description=(
        f"A file the agent handed back (its path as the manifest lists it): the first {MAX_ARTIFACT_READ} bytes, "
        "as text when they are UTF-8, else base64; _meta has the whole size, the sha256 and `truncated`."
    ),
)


def artifact_uri(agent_id: str, path: str) -> str:
    return f"agentfactory://agents/{agent_id}/artifacts/{quote(path, safe='/')}"


def _mime(path: str, text: bool) -> str:
    guessed = mimetypes.guess_type(path)[0]
    return guessed or ("text/plain" if text else "application/octet-stream")


async def list_artifact_resources(svc: Services, caller: Caller) -> list[types.Resource]:
    """The kept artifacts of the caller's newest agents (bounded: a listing is one JSON-RPC answer)."""
    found = await files.recent_artifacts(svc, caller, agents=RECENT_AGENTS, limit=MAX_LISTED)
    return [
        types.Resource(
            uri=artifact_uri(a.agent_id, a.path),
            name=f"{a.agent_id} {a.path}",
            description=f"an artifact of {a.agent_id}, sha256 {a.sha256}",
            mime_type=mimetypes.guess_type(a.path)[0],
            size=a.size,
        )
        for a in found
    ]


def _as_text(data: bytes, truncated: bool) -> str | None:
    """The bytes as text if they are UTF-8 (a character cut at the bound is left out), else None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        return decoder.decode(data, final=not truncated)
    except UnicodeDecodeError:
        return None


async def read_artifact_resource(svc: Services, caller: Caller, uri: str) -> types.ReadResourceResult | None:
    """The resource at `uri`, or None when `uri` is not an artifact's (another key's agent, or no such
    artifact: NotFoundError, as over HTTP)."""
    match = ARTIFACT_URI.match(uri)
    if match is None:
        return None
    agent_id, path = unquote(match["agent_id"]), unquote(match["path"])
    art, data = await files.read_head(svc, caller, agent_id, path, MAX_ARTIFACT_READ)
    truncated = len(data) < art.size
    meta = {"bytes": art.size, "sha256": art.sha256, "truncated": truncated}
    text = _as_text(data, truncated)
    contents: types.TextResourceContents | types.BlobResourceContents
    if text is not None:
        contents = types.TextResourceContents(uri=uri, mime_type=_mime(art.path, True), text=text, _meta=meta)
    else:
        blob = base64.b64encode(data).decode("ascii")
        contents = types.BlobResourceContents(uri=uri, mime_type=_mime(art.path, False), blob=blob, _meta=meta)
    return types.ReadResourceResult(contents=[contents])
