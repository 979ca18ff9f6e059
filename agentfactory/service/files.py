"""Files in and out (SPEC §9), once for every door: uploads (workspace archives) and artifacts.

An upload is streamed to the blob store as it arrives (never whole in memory), capped while it is
read, checked entry by entry (`runtime.archives.check_archive`) and only then kept; a refused or
cut-off one leaves nothing behind. Artifacts are received by the model gateway from the agent's
runtime when the agent ends; here they are listed and served.
"""

from __future__ import annotations

import asyncio
import hashlib
import tarfile
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import structlog

from agentfactory.errors import NotFoundError, SchemaError, TooLargeError
from agentfactory.runtime.archives import check_archive
from agentfactory.schemas import ArtifactManifest, UploadOut, iso
from agentfactory.service.agents import load_agent
from agentfactory.service.auth import Caller, new_id
from agentfactory.service.context import Services
from agentfactory.service.views import manifest_of
from agentfactory.store import queries
from agentfactory.store.blobs import CHUNK, read_chunks
from agentfactory.store.tables import TERMINAL, AgentRow

log = structlog.get_logger("agentfactory.files")
MIB = 1024 * 1024


async def create_upload(svc: Services, caller: Caller, body: AsyncIterator[bytes]) -> UploadOut:
    """Keep a workspace archive (tar or tar.gz) for the caller's key, once it passed the checks."""
    cap = svc.settings.max_upload_mb * MIB
    upload_id = new_id("up_")
    writer = await asyncio.to_thread(svc.blobs.writer, f"uploads/{upload_id}")
    digest = hashlib.sha256()
    size = 0
    pending = bytearray()
    try:
        async for data in body:
            size += len(data)
            if size > cap:
                raise TooLargeError(f"the upload is over {svc.settings.max_upload_mb} MiB (AGENTFACTORY_MAX_UPLOAD_MB)")
            digest.update(data)
            pending += data
            if len(pending) >= CHUNK:
                await asyncio.to_thread(writer.write, bytes(pending))
                pending.clear()
        if pending:
            await asyncio.to_thread(writer.write, bytes(pending))
        if size == 0:
            raise SchemaError("the upload is empty: send a tar or tar.gz archive as the body")

        def check() -> tuple[int, int]:
            with writer.reader() as f:
                summary = check_archive(
                    f,
                    max_unpacked_bytes=svc.catalog.limits.scratch_mb * MIB,
                    max_entries=svc.settings.max_upload_entries,
                )
            return summary.files, summary.unpacked_bytes

        files, unpacked = await asyncio.to_thread(check)
        await asyncio.to_thread(writer.commit)
    except BaseException:
        await asyncio.to_thread(writer.abort)
        raise
    now = time.time()
    row = await svc.store.run(
        queries.insert_upload,
        id=upload_id,
        key_id=caller.key_id,
        bytes=size,
        sha256=digest.hexdigest(),
        files=files,
        unpacked_bytes=unpacked,
        created_at=now,
        expires_at=now + svc.settings.upload_ttl_hours * 3600,
        used_at=None,
    )
    svc.metrics.upload_bytes.inc(size)
    log.info("upload_kept", upload_id=upload_id, bytes=size, files=files, unpacked_bytes=unpacked)
    return UploadOut(
        id=row.id, bytes=row.bytes, sha256=row.sha256, files=row.files, expires_at=iso(row.expires_at) or ""
    )


async def manifest(svc: Services, row: AgentRow) -> ArtifactManifest | None:
    """The agent's artifacts, or None when it asked for none."""
    files = await svc.store.run(queries.get_agent_files, agent_pk=row.pk)
    if files is None or not files.artifacts:
        return None
    return manifest_of(row, await svc.store.run(queries.list_artifacts, agent_pk=row.pk))


async def list_artifacts(svc: Services, caller: Caller, agent_id: str) -> ArtifactManifest:
    row = await load_agent(svc, caller, agent_id)
    found = await manifest(svc, row)
    return found or ArtifactManifest(items=[], dropped=[], complete=row.status in TERMINAL)


@dataclass(frozen=True)
class ArtifactBytes:
    path: str
    size: int
    sha256: str
    start: int
    end: int  # exclusive
    chunks: Iterator[bytes]  # blocking: iterate on a thread (Starlette does for a sync iterator)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` (one range) as [start, end); None to send it whole."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first:
            start, end = int(first), (int(last) + 1 if last else size)
        else:
            start, end = max(0, size - int(last)), size
    except ValueError:
        return None
    if start >= size or start < 0 or end <= start:
        raise RangeNotSatisfiable(size)
    return start, min(end, size)


class RangeNotSatisfiable(Exception):
    def __init__(self, size: int):
        self.size = size


async def open_artifact(
    svc: Services, caller: Caller, agent_id: str, path: str, range_header: str | None
) -> ArtifactBytes:
    row = await load_agent(svc, caller, agent_id)
    art = await svc.store.run(queries.get_artifact, agent_pk=row.pk, path=path)
    if art is None:
        raise NotFoundError(f"agent {agent_id} has no artifact {path[:200]!r}")
    span = parse_range(range_header, art.bytes)
    start, end = span if span is not None else (0, art.bytes)
    f = await asyncio.to_thread(svc.blobs.open, f"artifacts/{row.pk}/{art.seq}")
    return ArtifactBytes(
        path=art.path, size=art.bytes, sha256=art.sha256 or "", start=start, end=end, chunks=read_chunks(f, start, end)
    )


async def artifacts_tarball(svc: Services, caller: Caller, agent_id: str) -> Iterator[bytes]:
    """Every kept artifact of the agent as one tar.gz, compressed while it is sent (a chunk at a time:
    bounded memory whatever the sizes). A blocking iterator: Starlette runs it on a thread."""
    row = await load_agent(svc, caller, agent_id)
    arts = [a for a in await svc.store.run(queries.list_artifacts, agent_pk=row.pk) if not a.dropped]
    blobs = svc.blobs
    mtime = int(row.finished_at or time.time())

    def generate() -> Iterator[bytes]:
        gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip container
        for a in arts:
            info = tarfile.TarInfo(a.path)
            info.size, info.mode, info.mtime = a.bytes, 0o644, mtime
            yield gz.compress(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            for data in read_chunks(blobs.open(f"artifacts/{row.pk}/{a.seq}")):
                yield gz.compress(data)
            yield gz.compress(b"\0" * (-a.bytes % tarfile.BLOCKSIZE))
        yield gz.compress(b"\0" * (2 * tarfile.BLOCKSIZE)) + gz.flush()

    return generate()


@dataclass(frozen=True)
class ListedArtifact:
    agent_id: str
    path: str
    size: int
    sha256: str


async def recent_artifacts(svc: Services, caller: Caller, *, agents: int, limit: int) -> list[ListedArtifact]:
    """The kept artifacts of the caller's `agents` newest agents (an admin's: everyone's), at most `limit`."""
    rows = await svc.store.run(
        queries.list_recent_artifacts, key_id=None if caller.admin else caller.key_id, agents=agents, limit=limit
    )
    return [ListedArtifact(agent_id=i, path=a.path, size=a.bytes, sha256=a.sha256 or "") for i, a in rows]


async def read_head(
    svc: Services, caller: Caller, agent_id: str, path: str, max_bytes: int
) -> tuple[ArtifactBytes, bytes]:
    """An artifact's first `max_bytes` bytes (for a model's context: MCP's read_artifact and resources)."""
    try:
        art = await open_artifact(svc, caller, agent_id, path, f"bytes=0-{max_bytes - 1}")
    except RangeNotSatisfiable:  # an empty file
        art = await open_artifact(svc, caller, agent_id, path, None)

    def read() -> bytes:
        return b"".join(art.chunks)

    return art, await asyncio.to_thread(read)
