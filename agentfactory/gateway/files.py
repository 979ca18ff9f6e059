"""Files through the gateway socket (SPEC §9): the runtime fetches its workspace archive and hands
its artifacts back here. The server authenticates the token first; these handlers take the agent.

`GET /v1/agent/workspace` is the one place a workspace reaches an agent: a warm sandbox (SPEC §10)
claimed later fetches it the same way when its runtime starts.
"""

from __future__ import annotations

import asyncio
import tarfile
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from agentfactory.catalog import Catalog
from agentfactory.gateway.ledger import AgentGrant
from agentfactory.gateway.providers import GatewayError
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.archives import Collected, read_artifacts
from agentfactory.store import queries
from agentfactory.store.blobs import CHUNK, BlobStore
from agentfactory.store.engine import Store
from agentfactory.store.tables import AgentFilesRow

WORKSPACE_PATH = "/v1/agent/workspace"
ARTIFACTS_PATH = "/v1/agent/artifacts"
# The artifact stream is spooled to disk before it is read: its bound, past max_artifact_bytes, is
# the tar framing and the header-only entries of dropped files.
ARTIFACT_SPOOL_SLACK = 64 * 1024 * 1024
Db = Callable[..., Awaitable[Any]]


class GatewayFiles:
    def __init__(
        self, *, store: Store, blobs: BlobStore, catalog: Catalog, metrics: Metrics, logger: FilteringBoundLogger
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._catalog = catalog
        self._metrics = metrics
        self._log = logger
        self._collecting: set[int] = set()

    def agent_files(self, pk: int) -> AgentFilesRow | None:
        with self._store.session() as s:
            return queries.get_agent_files(session=s, agent_pk=pk)

    def _store_artifacts(self, pk: int, kept: list[tuple[str, int, str]], dropped: list[tuple[str, int]]) -> bool:
        with self._store.session() as s:
            return queries.store_artifacts(session=s, agent_pk=pk, kept=kept, dropped=dropped)

    async def workspace(self, request: web.Request, agent: AgentGrant, db: Db) -> web.StreamResponse:
        """The agent's workspace archive, streamed from the blob store (its runtime unpacks it)."""
        files = await db(self.agent_files, agent.pk)
        if files is None or files.workspace is None:
            raise GatewayError(404, "E_NOT_FOUND", "this agent has no workspace", outcome="bad_request")
        key = f"uploads/{files.workspace}"
        try:
            size = await asyncio.to_thread(self._blobs.size, key)
            blob = await asyncio.to_thread(self._blobs.open, key)
        except FileNotFoundError:
            raise GatewayError(404, "E_NOT_FOUND", "the workspace is gone", outcome="bad_request") from None
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        try:
            response.content_length = size
            await response.prepare(request)
            while data := await asyncio.to_thread(blob.read, CHUNK):
                await response.write(data)
        finally:
            blob.close()
        await response.write_eof()
        self._log.info("gateway_workspace_sent", agent_id=agent.id, bytes=size)
        return response

    async def artifacts(self, request: web.Request, agent: AgentGrant, db: Db) -> web.StreamResponse:
        """The agent's artifacts as a tar stream (its runtime sends them when the agent ends): spooled
        to disk within a bound, then read into the blob store (past max_artifact_bytes: dropped)."""
        files = await db(self.agent_files, agent.pk)
        if files is None or not files.artifacts:
            raise GatewayError(404, "E_NOT_FOUND", "this agent asked for no artifacts", outcome="bad_request")
        if files.collected or agent.pk in self._collecting:
            raise GatewayError(409, "E_CONFLICT", "the artifacts were already handed back", outcome="bad_request")
        blobs = self._blobs
        bound = self._catalog.limits.max_artifact_bytes
        self._collecting.add(agent.pk)
        spool = await asyncio.to_thread(blobs.writer, f"spool/{agent.id}")
        try:
            seen = 0
            async for data in request.content.iter_chunked(CHUNK):
                seen += len(data)
                if seen > bound + ARTIFACT_SPOOL_SLACK:
                    raise GatewayError(413, "E_TOO_LARGE", "the artifact stream is too large", outcome="bad_request")
                await asyncio.to_thread(spool.write, data)

            def read() -> Collected:
                with spool.reader() as f:
                    return read_artifacts(f, blobs=blobs, key_of=lambda n: f"artifacts/{agent.pk}/{n}", max_bytes=bound)

            try:
                collected = await asyncio.to_thread(read)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise GatewayError(400, "E_SCHEMA", f"not a tar stream: {exc}", outcome="bad_request") from None
            kept = [(p, n, sha) for p, n, sha, _key in collected.kept]
            if not await db(self._store_artifacts, agent.pk, kept, collected.dropped):
                await asyncio.to_thread(blobs.delete, f"artifacts/{agent.pk}")
                raise GatewayError(409, "E_CONFLICT", "the artifacts were already handed back", outcome="bad_request")
        finally:
            self._collecting.discard(agent.pk)
            await asyncio.to_thread(spool.abort)
        self._metrics.artifact_bytes.inc(collected.kept_bytes)
        self._metrics.artifacts_dropped.inc(len(collected.dropped))
        self._log.info(
            "artifacts_collected",
            agent_id=agent.id,
            files=len(kept),
            bytes=collected.kept_bytes,
            dropped=len(collected.dropped),
        )
        return web.json_response({"kept": len(kept), "dropped": len(collected.dropped)})
