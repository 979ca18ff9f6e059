"""SSE framing of log lines, with a cache of formatted blocks shared by every stream client.

Lines never change once stored, so a full block of them is formatted once and sliced for each
client: a hundred followers of one agent cost one JSON encoding per line, not a hundred. Reads of
the store are single-flight too: when a hundred followers wake on one commit, one of them reads the
new lines and the others take them from the block.

Memory is bounded in bytes, not only in counts (SPEC §14): the cache holds at most CACHE_BYTES of
formatted events, a block stops growing at BLOCK_BYTES (long lines take several blocks), and a
client is handed at most SEND_BYTES at once, so a client that stops reading holds one slice in its
connection's buffer, never a block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from bisect import bisect_right, insort
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send

from agentfactory.errors import error_body
from agentfactory.service.leases import StreamLease
from agentfactory.service.views import Timestamps
from agentfactory.vocabulary import STREAM_NAMES

BLOCK = 1000
SEND_BYTES = 16 * 1024
BLOCK_BYTES = 1024 * 1024
CACHE_BYTES = 32 * 1024 * 1024

Row = tuple[int, float, int, str]
# read(after, limit, max_bytes): rows with seq > after, at most `limit`, stopping once their text
# reaches `max_bytes` (at least one row).
Read = Callable[[int, int, int], Awaitable[list[Row]]]


def sse(event: str, data: str, event_id: int | None = None) -> str:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head + "data: " + data + "\n\n"


def format_lines(rows: list[Row]) -> tuple[bytes, list[int]]:
    """The `log` events of rows, and the byte offset where each row's event starts."""
    ts = Timestamps()
    parts: list[bytes] = []
    offsets: list[int] = []
    pos = 0
    for seq, t, s, text in rows:
        data = json.dumps({"seq": seq, "ts": ts(t), "stream": STREAM_NAMES[s], "text": text})
        chunk = sse("log", data, seq).encode()
        offsets.append(pos)
        parts.append(chunk)
        pos += len(chunk)
    return b"".join(parts), offsets


@dataclass
class _Block:
    """Formatted events of seqs base+1..end, grown as lines arrive (lines never change), up to
    BLOCK_BYTES: a full block stops at last_seq, and a continuation block from there holds the
    next ones."""

    base: int
    end: int
    last_seq: int
    data: bytearray = field(default_factory=bytearray)
    offsets: list[int] = field(default_factory=list)
    read_generation: int = -1  # the hub generation when the last read of the store began
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def extend(self, rows: list[Row]) -> int:
        """Add the rows after last_seq; returns how many bytes the block grew."""
        rows = [r for r in rows if self.last_seq < r[0] <= self.end]
        if not rows:
            return 0
        data, offsets = format_lines(rows)
        start = len(self.data)
        self.offsets.extend(start + o for o in offsets)
        self.data += data
        self.last_seq = rows[-1][0]
        return len(data)

    @property
    def complete(self) -> bool:
        return self.last_seq >= self.end

    @property
    def full(self) -> bool:
        """Holds BLOCK_BYTES: it grows no more; a continuation block from last_seq holds the rest."""
        return len(self.data) >= BLOCK_BYTES

    def events_after(self, cursor: int, max_bytes: int) -> tuple[bytes, int]:
        """The formatted events after `cursor` (base <= cursor < last_seq), whole events within
        max_bytes (at least one), and the seq of the last one."""
        first = cursor - self.base
        start = self.offsets[first]
        limit = start + max_bytes
        k = bisect_right(self.offsets, limit)  # events [0, k) start within the limit
        ends_within = k == len(self.offsets) and len(self.data) <= limit
        last = max(first, k - 1 if ends_within else k - 2)  # the last event that ends within it
        end = self.offsets[last + 1] if last + 1 < len(self.offsets) else len(self.data)
        return bytes(self.data[start:end]), self.base + last + 1


class BlockCache:
    """LRU of formatted blocks keyed by (agent id, first seq - 1), shared by every stream client:
    the live edge too, so a hundred followers of a running agent format each line once. Blocks
    start at multiples of BLOCK (and where a full block stops); the cache is bounded to
    `max_bytes` of events (and `max_blocks` blocks)."""

    def __init__(self, max_bytes: int = CACHE_BYTES, max_blocks: int = 1024, send_bytes: int = SEND_BYTES):
        self._blocks: OrderedDict[tuple[str, int], _Block] = OrderedDict()
        self._bytes = 0
        self._max_bytes, self._max_blocks, self._send_bytes = max_bytes, max_blocks, send_bytes
        # where continuation blocks start, per (agent id, BLOCK number): kept when blocks are
        # evicted, so a client deep into long lines does not re-read the blocks before its own
        self._starts: OrderedDict[tuple[str, int], list[int]] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _evict(self) -> None:
        while self._blocks and (self._bytes > self._max_bytes or len(self._blocks) > self._max_blocks):
            _key, old = self._blocks.popitem(last=False)
            self._bytes -= len(old.data)

    def _block(self, agent_id: str, base: int, end: int) -> _Block:
        key = (agent_id, base)
        block = self._blocks.get(key)
        if block is None:
            block = self._blocks[key] = _Block(base=base, end=end, last_seq=base)
            self._evict()
        else:
            self._blocks.move_to_end(key)
        return block

    async def events_after(self, agent_id: str, cursor: int, generation: int, read: Read) -> tuple[bytes, int]:
        """Formatted events after `cursor` (at most SEND_BYTES of them, within one block) and the
        new cursor.

        `read(after, limit, max_bytes)` reads rows from the store; `generation` is the hub's bump
        count now. A block read at this generation already holds everything committed, so it is
        not re-read.
        """
        block_no = cursor // BLOCK
        base, end = block_no * BLOCK, (block_no + 1) * BLOCK
        starts = self._starts.get((agent_id, block_no))
        if starts:
            self._starts.move_to_end((agent_id, block_no))
            i = bisect_right(starts, cursor)
            base = starts[i - 1] if i else base
        while True:
            block = self._block(agent_id, base, end)

            def stale(block: _Block = block) -> bool:
                return (
                    not block.complete
                    and not block.full
                    and block.last_seq <= cursor
                    and block.read_generation < generation
                )

            if stale():
                async with block.lock:
                    if stale():
                        # marked read only once the rows are in: a follower arriving meanwhile must
                        # wait on the lock for them, not find the block "fresh" and empty
                        want = BLOCK_BYTES - len(block.data)
                        grown = block.extend(await read(block.last_seq, end - block.last_seq, want))
                        block.read_generation = max(block.read_generation, generation)
                        if self._blocks.get((agent_id, base)) is block:
                            self._bytes += grown
                            self._evict()
            if block.last_seq > cursor:
                return block.events_after(cursor, self._send_bytes)
            if not (block.full and not block.complete):
                return b"", cursor
            base = block.last_seq  # the cursor is past what this block keeps: its continuation
            starts = self._starts.setdefault((agent_id, block_no), [])
            self._starts.move_to_end((agent_id, block_no))
            if base not in starts:
                insort(starts, base)
                while len(self._starts) > self._max_blocks:
                    self._starts.popitem(last=False)


class LeasedEventSource(EventSourceResponse):
    """An SSE response that holds one of its key's stream leases while it runs, and ends at once
    when the key is revoked (with an `error` event, when the client still reads)."""

    def __init__(self, lease: StreamLease, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lease = lease

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with self._lease.cancel_on_revoke() as revoked:
                await super().__call__(scope, receive, send)
            if revoked.cancelled_caught:
                request_id = scope.get("state", {}).get("request_id", "-")
                ended = "the dashboard session ended" if self._lease.session else "this API key was revoked"
                body = error_body(code="E_AUTH", message=ended, request_id=request_id)
                # a client that stopped reading does not get it: the stream just ends
                with anyio.move_on_after(1), contextlib.suppress(RuntimeError, OSError):
                    end = sse("error", json.dumps(body)).encode()
                    await send({"type": "http.response.body", "body": end, "more_body": False})
        finally:
            self._lease.release()
