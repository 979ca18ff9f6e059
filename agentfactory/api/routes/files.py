"""/uploads and /agents/{id}/artifacts (SPEC §9): thin adapters over `service.files`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response, StreamingResponse

from agentfactory.api.deps import get_caller, get_services
from agentfactory.api.routes.agents import ERRORS
from agentfactory.schemas import ArtifactManifest, UploadOut
from agentfactory.service import files
from agentfactory.service.auth import Caller
from agentfactory.service.context import Services

router = APIRouter(tags=["files"], responses=ERRORS)
CallerDep = Annotated[Caller, Depends(get_caller)]
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post(
    "/uploads",
    status_code=201,
    response_model=UploadOut,
    summary="Upload a workspace archive (tar or tar.gz body)",
    operation_id="createUpload",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def create_upload(request: Request, caller: CallerDep, svc: ServicesDep) -> UploadOut:
    return await files.create_upload(svc, caller, request.stream())


@router.get(
    "/agents/{agent_id}/artifacts",
    response_model=ArtifactManifest,
    summary="The agent's artifacts: kept files, dropped ones",
    operation_id="listArtifacts",
)
async def list_artifacts(agent_id: str, caller: CallerDep, svc: ServicesDep) -> ArtifactManifest:
    return await files.list_artifacts(svc, caller, agent_id)


@router.get(
    "/agents/{agent_id}/artifacts.tar.gz",
    summary="All the agent's artifacts as one tar.gz",
    operation_id="downloadArtifacts",
    response_class=StreamingResponse,
)
async def artifacts_tarball(agent_id: str, caller: CallerDep, svc: ServicesDep) -> StreamingResponse:
    chunks = await files.artifacts_tarball(svc, caller, agent_id)
    return StreamingResponse(
        chunks,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{agent_id}-artifacts.tar.gz"'},
    )


@router.get(
    "/agents/{agent_id}/artifacts/{path:path}",
    summary="One artifact's bytes (ETag: its sha256; Range: one byte range)",
    operation_id="getArtifact",
    response_class=StreamingResponse,
)
async def get_artifact(
    agent_id: str,
    path: str,
    caller: CallerDep,
    svc: ServicesDep,
    range: Annotated[str | None, Header()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    try:
        art = await files.open_artifact(svc, caller, agent_id, path, range)
    except files.RangeNotSatisfiable as exc:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{exc.size}"})
    etag = f'"{art.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Length": str(art.end - art.start)}
    if if_none_match is not None and etag in if_none_match:
        art.chunks.close()  # type: ignore[attr-defined]
        return Response(status_code=304, headers={"ETag": etag})
    status = 200
    if (art.start, art.end) != (0, art.size):
        status = 206
        headers["Content-Range"] = f"bytes {art.start}-{art.end - 1}/{art.size}"
    return StreamingResponse(art.chunks, status_code=status, media_type="application/octet-stream", headers=headers)
