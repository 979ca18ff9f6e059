"""The SDK's files and events (SPEC §9, §11): `upload`, `artifacts` and `events` of `sdk.AgentFactory`
(`FilesAndEvents`) and `sdk.AsyncAgentFactory` (`AsyncFilesAndEvents`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from agentfactory import workspace
from agentfactory.async_client import AsyncApiClient
from agentfactory.client import ApiClient
from agentfactory.schemas import ArtifactManifest, EventOut, UploadOut

Source = str | os.PathLike[str] | bytes
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20


def upload_source(source: Source) -> tuple[Iterator[bytes], bool]:
    """What `upload` sends for `source` (chunks, gzipped?): a directory tarred as `agentfactory run
    --workspace` tars it, a .tar or .tar.gz file as it is, or the bytes of one."""
    if isinstance(source, bytes):
        return iter([source]), source.startswith(GZIP_MAGIC)
    path = Path(source)
    if path.is_dir():
        return workspace.tar_stream(path, workspace.workspace_files(path)), True
    with open(path, "rb") as f:
        gzip = f.read(2) == GZIP_MAGIC

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while data := f.read(CHUNK):
                yield data

    return chunks(), gzip


class FilesAndEvents:
    _api: ApiClient

    def upload(self, source: Source) -> UploadOut:
        """A workspace for `create(..., workspace=upload.id)`: a directory (without `.git` and what
        its `.gitignore` files ignore, as `agentfactory run --workspace` sends it), a .tar or .tar.gz
        file, or the bytes of one. The server checks every entry (`ApiError` E_SCHEMA names a bad one)."""
        chunks, gzip = upload_source(source)
        return UploadOut.model_validate(self._api.upload(chunks, gzip=gzip))

    def artifacts(self, agent_id: str, *, download: str | os.PathLike[str] | None = None) -> ArtifactManifest:
        """The agent's artifact manifest (complete once the agent is terminal); with `download`, every
        kept artifact is also written under that directory with its path and checked against its
        sha256 (`workspace.ArtifactMismatch` if one does not match)."""
        manifest: dict[str, Any] = self._api.list_artifacts(agent_id)
        if download is not None:
            workspace.download_artifacts(self._api, agent_id, Path(download), manifest)
        return ArtifactManifest.model_validate(manifest)

    def events(
        self,
        *,
        follow: bool = True,
        after: int | None = None,
        agent_id: str | None = None,
        types: list[str] | None = None,
    ) -> Iterator[EventOut]:
        """Lifecycle events (`agent.started`, `agent.finished`, ... SPEC §11), oldest first: after
        event id `after` (None: from now on; with `agent_id`, that agent's whole history), only
        `types` if given. Following, it waits for new ones and resumes a dropped connection without
        losing or repeating one; `follow=False` stops at the log's end."""
        for doc in self._api.iter_events(follow=follow, after=after, agent_id=agent_id, types=types):
            yield EventOut.model_validate(doc)


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking chunk iterator (a tar made on a thread, a file read) drained off the event loop."""
    while (data := await asyncio.to_thread(next, chunks, None)) is not None:
        yield data


class AsyncFilesAndEvents:
    _api: AsyncApiClient

    async def upload(self, source: Source) -> UploadOut:
        """See `AgentFactory.upload`."""
        chunks, gzip = await asyncio.to_thread(upload_source, source)
        return UploadOut.model_validate(await self._api.upload(_aiter(chunks), gzip=gzip))

    async def artifacts(self, agent_id: str, *, download: str | os.PathLike[str] | None = None) -> ArtifactManifest:
        """See `AgentFactory.artifacts`."""
        manifest: dict[str, Any] = await self._api.list_artifacts(agent_id)
        if download is not None:
            dest = Path(download)
            for item in manifest.get("items") or []:
                target = workspace.artifact_dest(dest, item["path"])
                workspace.check_artifact(item, await self._api.download_artifact(agent_id, item["path"], target))
        return ArtifactManifest.model_validate(manifest)

    async def events(
        self,
        *,
        follow: bool = True,
        after: int | None = None,
        agent_id: str | None = None,
        types: list[str] | None = None,
    ) -> AsyncIterator[EventOut]:
        """See `AgentFactory.events`: `async for event in af.events(): ...`."""
        async for doc in self._api.iter_events(follow=follow, after=after, agent_id=agent_id, types=types):
            yield EventOut.model_validate(doc)
