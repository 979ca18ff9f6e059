"""The log pump: one reader thread per agent, one writer thread for all, the store as the only copy.

Readers split container output into chunks of lines, mask secrets, bound the volume and assign
gap-free `seq`s; the writer commits chunks (one row each) in batches together with each agent's
resume position, then wakes stream readers. Clients are served from the store, so no client can
slow an agent.

Memory is bounded and nothing read is dropped. What readers hand the writer waits in a queue
bounded in bytes, per agent and in all: a reader whose agent floods blocks on its own share, stops
reading, and the agent blocks on its full pipe; other agents' lines keep their turn. A commit that
fails because the store cannot write (disk full, database gone) is retried with backoff for as long
as it takes, every reader waiting meanwhile; a batch the store refuses for what it holds costs only
its own agent's capture, which then says so (`CaptureIncomplete`) instead of sealing lines it lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from agentfactory.backends.base import STDERR, STDOUT, OutputSource
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.capture_queue import (
    Batch,
    ChunkRow,
    Done,
    Seal,
    WriteQueue,
)
from agentfactory.runtime.hub import Hub
from agentfactory.runtime.lines import Bounded, Chunk, LineSplitter
from agentfactory.store import Store, describe_store_error, queries, store_cannot_write

log = structlog.get_logger("agentfactory.logpump")
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0
# A group of batches refused this many times for a reason other than the store being unable to
# write is committed batch by batch; the agent whose lines the store refuses loses the rest of its
# capture, alone.
REFUSALS_BEFORE_ISOLATING = 3


class CaptureIncomplete(Exception):
    """Some of the agent's output could not be stored: its seal is computed from what was."""


class CaptureInterrupted(Exception):
    """The output stream ended while the container had not: the engine went away or restarted."""


def _output_ended(source: OutputSource) -> bool:
    """Whether `source` ended because its container exited (asks the engine; False on doubt). A
    source that cannot tell (no `ended`) ended with its container."""
    ended = getattr(source, "ended", None)
    if ended is None:
        return True
    try:
        return bool(ended())
    except Exception:
        return False


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

    def __init__(self, *, store: Store, hub: Hub, metrics: Metrics, owner: str | None = None):
        self._store = store
        self._owner = owner  # lines are stored only for agents this replica (still) owns
        self._hub = hub
        self._metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue = WriteQueue(metrics)
        self._readers: dict[int, tuple[threading.Thread, OutputSource]] = {}
        # Agents some of whose lines the store refused: nothing more of theirs is stored (no gap
        # in their seqs), and their capture ends with CaptureIncomplete.
        self._refused: dict[int, str] = {}
        self._abandon = threading.Event()
        self.stopping = False
        self.store_error: str | None = None  # why the last commit failed, until one succeeds
        self._writer = threading.Thread(target=self._write_loop, name="logpump-writer", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer; capture futures complete on `loop`."""
        self._loop = loop
        self._writer.start()

    def stop(self, timeout: float = 5) -> None:
        """Stop reading (containers keep running; a restart resumes them), flush, stop the writer.

        What is not committed by the deadline (a store that cannot write) is given up here: the
        agents' stored positions do not cover it, so the next start reads it again."""
        self.stopping = True
        self._queue.refuse()
        for _thread, source in list(self._readers.values()):
            source.close()
        for thread, _source in list(self._readers.values()):
            thread.join(timeout)
        self._queue.close()
        self._writer.join(timeout)
        if self._writer.is_alive():
            self._abandon.set()
            self._writer.join(timeout)

    def capture(
        self, *, agent_pk: int, source: OutputSource, secrets: list[str], max_log_bytes: int, resume: Resume
    ) -> asyncio.Future[Seal | None]:
        """Start reading `source`; the future completes once every line of it is committed, with
        the seal of the agent's whole output when this capture saw all of it (None after a resume),
        or fails: CaptureIncomplete when the store refused some of its lines, the backend's error
        when reading broke off."""
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

        def push(chunks: Iterable[Chunk], final: bool) -> None:
            """Queue chunks for the writer (blocking while this agent's share of the queue is full).
            Each chunk's bytes go into the digest and are let go of as its row's text is made."""
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
            if (rows or final) and agent_pk not in self._refused:
                dropped = (bounded.dropped_lines, bounded.dropped_bytes)
                self._queue.put(Batch(agent_pk, rows, lines, consumed, dropped, nbytes))

        error: BaseException | None = None
        try:
            for stream, data in source.chunks():
                if agent_pk in self._refused:
                    continue  # drained, so the agent is not blocked, but no longer stored
                chunks = splitter.feed(stream, data)
                if skip[STDOUT] or skip[STDERR]:
                    chunks = self._skip(chunks, skip)
                for chunk in chunks:
                    seen[chunk.stream] += chunk.raw_complete
                push(bounded.admit(chunks), final=False)
        except Exception as exc:  # the engine went away mid-read: keep what we have, report it
            error = exc
            log.warning("log_capture_interrupted", agent_pk=agent_pk, error=type(exc).__name__)
        # Only an output that ended with its container is finished: a stream the engine cut (it
        # stopped or restarted) leaves its partial line and tail unread, its position stored, for
        # the capture that resumes it (as at shutdown).
        ended = not self.stopping and _output_ended(source)
        try:
            if ended:
                rest = splitter.flush()
                for chunk in rest:
                    seen[chunk.stream] += chunk.raw_complete
                head = bounded.admit(rest)
                # One batch, so the tail and the final positions are committed together.
                push(self._then(head, bounded.finish()), final=True)
        finally:
            self._readers.pop(agent_pk, None)
            whole = resume.last_seq == 0 and ended
            seal = (sealed_lines, sealed_bytes, digest.hexdigest()) if whole else None
            if not ended and not self.stopping:
                error = CaptureInterrupted(f"the output stream was cut ({type(error).__name__ if error else 'EOF'})")
            self._queue.put(Done(agent_pk, notify, error, seal))

    def close_reader(self, agent_pk: int) -> None:
        """Stop reading one agent (a watcher that cannot finish is given up): its capture ends."""
        reader = self._readers.get(agent_pk)
        if reader is not None:
            reader[1].close()

    @staticmethod
    def _then(first: list[Chunk], rest: Iterable[Chunk]) -> Iterable[Chunk]:
        yield from first
        yield from rest

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
        while (items := self._queue.take()) is not None:
            try:
                self._commit_until_stored(items)
            except Exception as exc:  # a bug: it must not end capture for every agent, nor be sealed over
                log.exception("log_writer_failed")
                self._refuse(items, exc)
            for it in items:
                if isinstance(it, Done):
                    self._settle(it)

    def _settle(self, done: Done) -> None:
        refused = self._refused.pop(done.agent_pk, None)
        if refused is not None:
            done.notify(CaptureIncomplete(refused), None)
        else:
            done.notify(done.error, done.seal)

    def _commit_until_stored(self, items: list[Batch | Done], *, isolate: bool = True) -> None:
        """Commit the items' batches, retrying with backoff while the store cannot write; a group
        the store keeps refusing is committed batch by batch (`isolate`), and a batch refused alone
        is given up: its agent's capture is marked incomplete."""
        delay, refusals = RETRY_FIRST_SECONDS, 0
        while True:
            try:
                self._commit(items)
            except Exception as exc:
                self._metrics.log_write_failures.inc()
                if self._abandon.is_set():  # shutting down past the deadline: the restart re-reads
                    log.error("log_commit_abandoned", error=type(exc).__name__)
                    return
                if store_cannot_write(exc):
                    if self.store_error is None:
                        log.error("log_store_cannot_write", error=describe_store_error(exc))
                    self.store_error = describe_store_error(exc)
                else:
                    refusals += 1
                    log.warning("log_commit_refused", error=type(exc).__name__, refusals=refusals)
                    if refusals >= REFUSALS_BEFORE_ISOLATING:
                        self._isolate(items, exc) if isolate else self._refuse(items, exc)
                        return
                self._abandon.wait(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            if self.store_error is not None:
                log.info("log_store_writes_again")
                self.store_error = None
            return

    def _isolate(self, items: list[Batch | Done], exc: BaseException) -> None:
        """Commit batch by batch, in order: each agent keeps every line before the one refused."""
        batches = [it for it in items if isinstance(it, Batch)]
        if len(batches) == 1:
            self._refuse(batches, exc)
            return
        for batch in batches:
            self._commit_until_stored([batch], isolate=False)

    def _refuse(self, items: list[Batch] | list[Batch | Done], exc: BaseException) -> None:
        for it in items:
            if isinstance(it, Batch) and it.agent_pk not in self._refused:
                self._refused[it.agent_pk] = (
                    f"the store refused some of this agent's output ({type(exc).__name__}); "
                    "what was stored before is kept and sealed"
                )
                log.error("log_capture_refused", agent_pk=it.agent_pk, error=type(exc).__name__)

    def _commit(self, items: list[Batch | Done]) -> None:
        rows: list[ChunkRow] = []
        positions: dict[int, Batch] = {}
        first_ts: dict[int, float] = {}
        lines = nbytes = 0
        for it in items:
            if isinstance(it, Batch) and it.agent_pk not in self._refused:
                if it.rows:
                    rows.extend(it.rows)
                    first_ts.setdefault(it.agent_pk, it.rows[0][3])
                positions[it.agent_pk] = it
                lines += it.lines
                nbytes += it.nbytes
        if not positions:
            return
        fenced = self._store.call(
            queries.store_log_chunks,
            rows=rows,
            positions={pk: (*b.consumed, *b.dropped) for pk, b in positions.items()},
            first_output_at=first_ts,
            owner=self._owner,
        )
        if fenced:  # adopted by another replica: its lines are the adopter's to store
            log.warning("log_lines_fenced", agent_pks=sorted(fenced))
        self._metrics.log_lines.inc(lines)
        self._metrics.log_bytes.inc(nbytes)
        self._hub.bump_threadsafe(list(positions), row=False)
