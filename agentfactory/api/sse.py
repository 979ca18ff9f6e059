"""SSE framing of log lines, with a cache of formatted blocks shared by every stream client.

Lines never change once stored, so a full block of them is formatted once and sliced for each
client: a hundred followers of one agent cost one JSON encoding per line, not a hundred. Reads of
the store are single-flight too: when a hundred followers wake on one commit, one of them reads the
new lines and the others take them from the block.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from agentfactory.service.views import Timestamps
from agentfactory.vocabulary import STREAM_NAMES

BLOCK = 1000

Row = tuple[int, float, int, str]
T = TypeVar("T")


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
    """Formatted events of one block of BLOCK seqs, grown as lines arrive (lines never change)."""

    base: int
    last_seq: int
    data: bytearray = field(default_factory=bytearray)
    offsets: list[int] = field(default_factory=list)
    read_generation: int = -1  # the hub generation when the last read of the store began
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def extend(self, rows: list[Row]) -> None:
        rows = [r for r in rows if r[0] > self.last_seq]
        if not rows:
            return
        data, offsets = format_lines(rows)
        start = len(self.data)
        self.offsets.extend(start + o for o in offsets)
        self.data += data
        self.last_seq = rows[-1][0]

    @property
    def complete(self) -> bool:
        return self.last_seq >= self.base + BLOCK


class BlockCache:
    """LRU of formatted blocks keyed by (agent id, block number), shared by every stream client:
    the live edge too, so a hundred followers of a running agent format each line once."""

    def __init__(self, max_blocks: int = 128):
        self._blocks: OrderedDict[tuple[str, int], _Block] = OrderedDict()
        self._max = max_blocks

    async def events_after(
        self, agent_id: str, cursor: int, generation: int, read: Callable[[int, int], Awaitable[list[Row]]]
    ) -> tuple[bytes, int]:
        """Formatted events after `cursor` (up to the end of its block) and the new cursor.

        `read(after, limit)` reads rows from the store; `generation` is the hub's bump count now.
        A block read at this generation already holds everything committed, so it is not re-read.
        """
        block_no = cursor // BLOCK
        base = block_no * BLOCK
        key = (agent_id, block_no)
        block = self._blocks.get(key)
        if block is None:
            block = self._blocks[key] = _Block(base=base, last_seq=base)
            if len(self._blocks) > self._max:
                self._blocks.popitem(last=False)
        self._blocks.move_to_end(key)

        def stale() -> bool:
            assert block is not None
            return not block.complete and block.last_seq <= cursor and block.read_generation < generation

        if stale():
            async with block.lock:
                if stale():
                    # marked read only once the rows are in: a follower arriving meanwhile must
                    # wait on the lock for them, not find the block "fresh" and empty
                    block.extend(await read(block.last_seq, base + BLOCK - block.last_seq))
                    block.read_generation = max(block.read_generation, generation)
        if block.last_seq <= cursor:
            return b"", cursor
        return bytes(block.data[block.offsets[cursor - base] :]), block.last_seq
