"""The log pump's hand-over between its reader threads and its writer: batches of an agent's
stored-to-be lines and the end of its capture, queued bounded in bytes, per agent and in all."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from agentfactory.observability.metrics import Metrics

BATCH_LINES = 50_000
BATCH_BYTES = 8 * 1024 * 1024
# Bytes read from agents and waiting for the writer: per agent, and in all.
AGENT_QUEUE_BYTES = 4 * 1024 * 1024
QUEUE_BYTES = 32 * 1024 * 1024

ChunkRow = tuple[int, int, int, float, int, str]  # agent_pk, last_seq, first_seq, ts, stream, text


@dataclass
class Batch:
    """Chunk rows one reader made of an agent's output, with where its streams then stood."""

    agent_pk: int
    rows: list[ChunkRow]
    lines: int
    consumed: tuple[int, int]
    dropped: tuple[int, int]
    nbytes: int


Seal = tuple[int, int, str]  # (lines, bytes, sha256 hex) over each stored line's UTF-8 text + b"\n"


@dataclass
class Done:
    """The end of an agent's capture: `notify` is called once every batch before it is stored."""

    agent_pk: int
    notify: Callable[[BaseException | None, Seal | None], None]
    error: BaseException | None
    seal: Seal | None
    nbytes: int = 0


class WriteQueue:
    """Batches on their way to the writer, bounded in bytes: `put` blocks while the agent's own
    share (or the whole queue) is full. A batch bigger than a share is let in alone, so no reader
    waits forever. Bytes are counted until the writer takes them: what is held in all is at most
    the queue plus the one group being committed (BATCH_BYTES, or one batch bigger than that)."""

    def __init__(self, metrics: Metrics):
        self._cond = threading.Condition()
        self._items: deque[Batch | Done] = deque()
        self._agent_bytes: dict[int, int] = {}
        self._bytes = 0
        self._metrics = metrics
        self.refusing = False  # shutting down: readers are not waited for
        self.closed = False  # no more items: the writer ends once the queue is empty

    def put(self, item: Batch | Done) -> bool:
        """Queue `item`, waiting for room; False when refused (shutting down)."""
        n = item.nbytes
        with self._cond:
            while not self.refusing and n and self._full(item.agent_pk, n):
                self._cond.wait()
            if self.refusing and isinstance(item, Batch):
                return False
            self._items.append(item)
            if n:
                self._agent_bytes[item.agent_pk] = self._agent_bytes.get(item.agent_pk, 0) + n
                self._bytes += n
                self._metrics.log_queue_bytes.set(self._bytes)
            self._cond.notify_all()
            return True

    def _full(self, agent_pk: int, n: int) -> bool:
        mine = self._agent_bytes.get(agent_pk, 0)
        return bool(mine and mine + n > AGENT_QUEUE_BYTES) or bool(self._bytes and self._bytes + n > QUEUE_BYTES)

    def take(self) -> list[Batch | Done] | None:
        """What is queued now, up to one commit's worth (waiting for the first); None once closed
        and empty. No waiting for more: a lone line is committed at once."""
        with self._cond:
            while not self._items and not self.closed:
                self._cond.wait()
            if not self._items:
                return None
            items: list[Batch | Done] = []
            lines = nbytes = 0
            while self._items and lines < BATCH_LINES and nbytes < BATCH_BYTES:
                item = self._items.popleft()
                items.append(item)
                if isinstance(item, Batch):
                    lines += item.lines
                    nbytes += item.nbytes
                if item.nbytes:
                    left = self._agent_bytes[item.agent_pk] - item.nbytes
                    if left:
                        self._agent_bytes[item.agent_pk] = left
                    else:
                        del self._agent_bytes[item.agent_pk]
            self._bytes -= nbytes
            self._metrics.log_queue_bytes.set(self._bytes)
            self._cond.notify_all()
            return items

    def refuse(self) -> None:
        with self._cond:
            self.refusing = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
