"""Files in and out (SPEC §9): uploads, the agent's workspace and artifact globs, the artifacts'
manifest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from agentfactory.store.tables import (
    AgentFilesRow,
    AgentRow,
    ArtifactRow,
    UploadRow,
)


def insert_upload(*, session: Session, **values: Any) -> UploadRow:
    row = UploadRow(**values)
    session.add(row)
    session.flush()
    return row


def use_upload(*, session: Session, upload_id: str, key_id: str, now: float) -> UploadRow | None:
    """The key's unexpired upload, marked used (it is kept with the agent from now on); else None."""
    row = session.get(UploadRow, upload_id)
    if row is None or row.key_id != key_id or (row.used_at is None and row.expires_at <= now):
        return None
    if row.used_at is None:
        row.used_at = now
    return row


def get_upload(*, session: Session, upload_id: str) -> UploadRow | None:
    return session.get(UploadRow, upload_id)


def purge_unused_uploads(*, session: Session, now: float, limit: int = 500) -> list[str]:
    """Delete the uploads no agent used that expired; answers their ids (their blobs go next)."""
    ids = list(
        session.scalars(
            select(UploadRow.id).where(UploadRow.used_at.is_(None), UploadRow.expires_at <= now).limit(limit)
        )
    )
    if ids:
        session.execute(delete(UploadRow).where(UploadRow.id.in_(ids)))
    return ids


def purge_used_uploads_of_gone_agents(*, session: Session, limit: int = 500) -> list[str]:
    """Uploads an agent used, once no agent that refers to them is left; answers their ids."""
    referenced = select(AgentFilesRow.workspace).where(AgentFilesRow.workspace.is_not(None))
    ids = list(
        session.scalars(
            select(UploadRow.id).where(UploadRow.used_at.is_not(None), UploadRow.id.not_in(referenced)).limit(limit)
        )
    )
    if ids:
        session.execute(delete(UploadRow).where(UploadRow.id.in_(ids)))
    return ids


def insert_agent_files(*, session: Session, agent_pk: int, workspace: str | None, artifacts: list[str]) -> None:
    session.add(AgentFilesRow(agent_pk=agent_pk, workspace=workspace, artifacts=list(artifacts), collected=False))
    session.flush()


def get_agent_files(*, session: Session, agent_pk: int) -> AgentFilesRow | None:
    return session.get(AgentFilesRow, agent_pk)


def store_artifacts(
    *, session: Session, agent_pk: int, kept: Sequence[tuple[str, int, str]], dropped: Sequence[tuple[str, int]]
) -> bool:
    """Record an agent's collected artifacts once (kept: path, bytes, sha256 in blob order; dropped:
    path, bytes); False (nothing written) when they were already recorded."""
    files = session.get(AgentFilesRow, agent_pk, with_for_update=True)
    if files is None or files.collected:
        return False
    seq = 0
    for path, nbytes, sha in kept:
        session.add(ArtifactRow(agent_pk=agent_pk, seq=seq, path=path, bytes=nbytes, sha256=sha, dropped=False))
        seq += 1
    for path, nbytes in dropped:
        session.add(ArtifactRow(agent_pk=agent_pk, seq=seq, path=path, bytes=nbytes, sha256=None, dropped=True))
        seq += 1
    files.collected = True
    return True


def list_artifacts(*, session: Session, agent_pk: int) -> list[ArtifactRow]:
    return list(session.scalars(select(ArtifactRow).where(ArtifactRow.agent_pk == agent_pk).order_by(ArtifactRow.seq)))


def get_artifact(*, session: Session, agent_pk: int, path: str) -> ArtifactRow | None:
    q = select(ArtifactRow).where(
        ArtifactRow.agent_pk == agent_pk, ArtifactRow.path == path, ArtifactRow.dropped.is_(False)
    )
    return session.scalars(q).first()


def list_recent_artifacts(
    *, session: Session, key_id: str | None, agents: int, limit: int
) -> list[tuple[str, ArtifactRow]]:
    """The kept artifacts of the key's (None: everyone's) `agents` newest agents, newest agent first,
    at most `limit`, each with its agent's id."""
    recent = select(AgentRow.pk).order_by(AgentRow.pk.desc()).limit(agents)
    if key_id is not None:
        recent = recent.where(AgentRow.key_id == key_id)
    q = (
        select(AgentRow.id, ArtifactRow)
        .join(AgentRow, AgentRow.pk == ArtifactRow.agent_pk)
        .where(ArtifactRow.agent_pk.in_(recent.scalar_subquery()), ArtifactRow.dropped.is_(False))
        .order_by(ArtifactRow.agent_pk.desc(), ArtifactRow.seq)
        .limit(limit)
    )
    return [(agent_id, art) for agent_id, art in session.execute(q)]
