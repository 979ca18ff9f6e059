"""The log pump: one reader thread per agent, one writer thread for all, the store as the only copy.

Readers split container output into chunks of lines, mask secrets, bound the volume and assign
gap-free `seq`s; the writer commits chunks (one row each) in batches together with each agent's
resume position, then wakes stream readers. Clients are served from the store, so no client can
slow an agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import update

from agentfactory.backends.base import STDERR, STDOUT, OutputSource
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.hub import Hub
from agentfactory.runtime.lines import Bounded, Chunk, LineSplitter
from agentfactory.store import Store
from agentfactory.store.tables import AgentRow

log = structlog.get_logger("agentfactory.logpump")
BATCH_LINES = 50_000

ChunkRow = tuple[int, int, int, float, int, str]  # agent_pk, last_seq, first_seq, ts, stream, text


@dataclass
class _Batch:
    agent_pk: int
    rows: list[ChunkRow]
    lines: int
    consumed: tuple[int, int]
    dropped: tuple[int, int]
    nbytes: int


Seal = tuple[int, int, str]  # (lines, bytes, sha256 hex) over each stored line's UTF-8 text + b"\n"


@dataclass
class _Done:
    agent_pk: int
    notify: Callable[[BaseException | None, Seal | None], None]
    error: BaseException | None
    seal: Seal | None


@dataclass(frozen=True)
class Resume:
    """Where capture of an agent continues: the last stored seq and how many raw lines of each
    stream are already stored (the replayed output's first lines are skipped)."""

    last_seq: int = 0
    stdout_consumed: int = 0
    stderr_consumed: int = 0
    dropped_lines: int = 0
    dropped_bytes: int = 0


class LogPump:
    """Owns the writer thread and the per-agent reader threads."""

    def __init__(self, *, store: Store, hub: Hub, metrics: Metrics):
        self._store = store
        self._hub = hub
        self._metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: queue.SimpleQueue[_Batch | _Done | None] = queue.SimpleQueue()
        self._readers: dict[int, tuple[threading.Thread, OutputSource]] = {}
        self.stopping = False
        self._writer = threading.Thread(target=self._write_loop, name="logpump-writer", daemon=True)
        self._insert_sql = (
            "INSERT INTO log_chunks (agent_pk, last_seq, first_seq, ts, stream, text) VALUES (?, ?, ?, ?, ?, ?)"
            if store.is_sqlite
            else "INSERT INTO log_chunks (agent_pk, last_seq, first_seq, ts, stream, text) "
            "VALUES (%s, %s, %s, %s, %s, %s)"
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer; capture futures complete on `loop`."""
        self._loop = loop
        self._writer.start()

    def stop(self, timeout: float = 5) -> None:
        """Stop reading (containers keep running; a restart resumes them), flush, stop the writer."""
        self.stopping = True
        for _thread, source in list(self._readers.values()):
            source.close()
        for thread, _source in list(self._readers.values()):
            thread.join(timeout)
        self._queue.put(None)
        self._writer.join(timeout)

    def capture(
        self, *, agent_pk: int, source: OutputSource, secrets: list[str], max_log_bytes: int, resume: Resume
    ) -> asyncio.Future[Seal | None]:
        """Start reading `source`; the future completes once every line of it is committed, with
        the seal of the agent's whole output when this capture saw all of it (None after a resume)."""
        loop = self._loop
        assert loop is not None, "LogPump.start(loop) first"
        done: asyncio.Future[Seal | None] = loop.create_future()

        def notify(exc: BaseException | None, seal: Seal | None) -> None:
            def settle() -> None:
                if not done.done():
                    done.set_exception(exc) if exc else done.set_result(seal)

            loop.call_soon_threadsafe(settle)

        thread = threading.Thread(
            target=self._read,
            args=(agent_pk, source, secrets, max_log_bytes, resume, notify),
            name=f"logpump-{agent_pk}",
            daemon=True,
        )
        self._readers[agent_pk] = (thread, source)
        thread.start()
        return done

    # -- reader (one thread per agent) -----------------------------------------------------------

    def _read(
        self,
        agent_pk: int,
        source: OutputSource,
        secrets: list[str],
        max_log_bytes: int,
        resume: Resume,
        notify: Callable[[BaseException | None, Seal | None], None],
    ) -> None:
        splitter = LineSplitter(secrets)
        digest, sealed_lines, sealed_bytes = hashlib.sha256(), 0, 0
        bounded = Bounded(max_log_bytes)
        if resume.dropped_lines:
            bounded.head_bytes = max_log_bytes
            bounded.dropped_lines, bounded.dropped_bytes = resume.dropped_lines, resume.dropped_bytes
        seq = resume.last_seq
        skip = {STDOUT: resume.stdout_consumed, STDERR: resume.stderr_consumed}
        seen = {STDOUT: resume.stdout_consumed, STDERR: resume.stderr_consumed}
        consumed = (seen[STDOUT], seen[STDERR])

        def push(chunks: list[Chunk], final: bool) -> None:
            nonlocal seq, consumed, sealed_lines, sealed_bytes
            ts = time.time()
            rows: list[ChunkRow] = []
            lines = nbytes = 0
            for chunk in chunks:
                rows.append((agent_pk, seq + chunk.lines, seq + 1, ts, chunk.stream, chunk.text))
                seq += chunk.lines
                lines += chunk.lines
                nbytes += chunk.nbytes
                digest.update(chunk.data)
            sealed_lines += lines
            sealed_bytes += nbytes
            if final or not bounded.tail:
                consumed = (seen[STDOUT], seen[STDERR])
            if rows or final:
                dropped = (bounded.dropped_lines, bounded.dropped_bytes)
                self._queue.put(_Batch(agent_pk, rows, lines, consumed, dropped, nbytes))

        error: BaseException | None = None
        try:
            for stream, data in source.chunks():
                chunks = splitter.feed(stream, data)
                if skip[STDOUT] or skip[STDERR]:
                    chunks = self._skip(chunks, skip)
                for chunk in chunks:
                    seen[chunk.stream] += chunk.raw_complete
                push(bounded.admit(chunks), final=False)
        except Exception as exc:  # the engine went away mid-read: keep what we have, report it
            error = exc
            log.warning("log_capture_interrupted", agent_pk=agent_pk, error=type(exc).__name__)
        finally:
            if not self.stopping:  # at shutdown a partial line stays unread: the restart re-reads it
                rest = splitter.flush()
                for chunk in rest:
                    seen[chunk.stream] += chunk.raw_complete
                push(bounded.admit(rest) + bounded.finish(), final=True)
            self._readers.pop(agent_pk, None)
            whole = resume.last_seq == 0 and not self.stopping
            seal = (sealed_lines, sealed_bytes, digest.hexdigest()) if whole else None
            self._queue.put(_Done(agent_pk, notify, error, seal))

    @staticmethod
    def _skip(chunks: list[Chunk], skip: dict[int, int]) -> list[Chunk]:
        """Without the first skip[stream] raw lines of each stream (already stored before a restart;
        the pieces of a long line that is skipped go with it)."""
        kept = []
        for chunk in chunks:
            n = skip[chunk.stream]
            if n > 0:
                skip[chunk.stream] = max(0, n - chunk.raw_complete)
                rest = chunk.skip_lines(n) if chunk.raw_complete else None
                if rest is not None:
                    kept.append(rest)
                continue
            kept.append(chunk)
        return kept

    # -- writer (one thread) ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            items: list[_Batch | _Done] = []
            if item is None:
                stopping = True
            else:
                items.append(item)
            # Group commit: take what is queued now and commit it; what arrives meanwhile is the
            # next batch. No waiting for more, so a lone line is committed at once.
            n = 0
            while not stopping and n < BATCH_LINES:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                items.append(item)
                if isinstance(item, _Batch):
                    n += item.lines
            try:
                self._commit(items)
            except Exception:
                log.exception("log_commit_failed")
                time.sleep(0.5)
                try:
                    self._commit(items)
                except Exception:
                    log.exception("log_commit_failed_again")
            for it in items:
                if isinstance(it, _Done):
                    it.notify(it.error, it.seal)

    def _commit(self, items: list[_Batch | _Done]) -> None:
        rows: list[ChunkRow] = []
        positions: dict[int, _Batch] = {}
        first_ts: dict[int, float] = {}
        lines = nbytes = 0
        for it in items:
            if isinstance(it, _Batch):
                if it.rows:
                    rows.extend(it.rows)
                    first_ts.setdefault(it.agent_pk, it.rows[0][3])
                positions[it.agent_pk] = it
                lines += it.lines
                nbytes += it.nbytes
        if not positions:
            return
        with self._store.session() as s:
            conn = s.connection()
            if rows:
                conn.exec_driver_sql(self._insert_sql, rows)
            for pk, batch in positions.items():
                conn.execute(
                    update(AgentRow)
                    .where(AgentRow.pk == pk)
                    .values(
                        stdout_consumed=batch.consumed[0],
                        stderr_consumed=batch.consumed[1],
                        log_dropped_lines=batch.dropped[0],
                        log_dropped_bytes=batch.dropped[1],
                    )
                )
                if pk in first_ts:
                    conn.execute(
                        update(AgentRow)
                        .where(AgentRow.pk == pk, AgentRow.first_output_at.is_(None))
                        .values(first_output_at=first_ts[pk])
                    )
        self._metrics.log_lines.inc(lines)
        self._metrics.log_bytes.inc(nbytes)
        self._hub.bump_threadsafe(list(positions))
