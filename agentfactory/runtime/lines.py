"""Turning a container's byte chunks into stored log chunks: splitting, masking, bounding. Pure.

Output is handled a read at a time, never a line at a time: a `Chunk` is the complete lines of one
read of one stream, and the store keeps one row per chunk. Masking (before anything is split, see
masking.py), splitting, UTF-8 repair, the byte bound and the seal's digest all run over a chunk's
bytes at C speed; Python only loops per line where a line is longer than MAX_LINE_BYTES.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from agentfactory.runtime.masking import Masker

MAX_LINE_BYTES = 65_536


def _utf8_cut(data: bytes | bytearray, limit: int) -> int:
    """A cut position ≤ limit that does not split a UTF-8 sequence (when one can be found)."""
    cut = limit
    while cut > limit - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else limit


@dataclass(frozen=True)
class Chunk:
    """Consecutive stored lines of one stream, held once: as `data`, their UTF-8 text with each
    line followed by b"\\n" (the seal's byte form). `text` (the stored form, lines joined by "\\n")
    is decoded from it when the chunk is stored, so a chunk waiting in the tail ring costs its
    bytes and nothing more."""

    stream: int
    data: bytes
    lines: int
    raw_complete: int  # how many raw lines of the container this ends (resume counts them)

    @classmethod
    def of_text(cls, stream: int, text: str, raw_complete: int) -> Chunk:
        data = text.encode("utf-8") + b"\n"
        return cls(stream, data, data.count(b"\n"), raw_complete)

    @property
    def text(self) -> str:
        return self.data[:-1].decode("utf-8")

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def _part(self, start: int, end: int) -> Chunk | None:
        if start >= end:
            return None
        if start == 0 and end == len(self.data):
            return self
        data = self.data[start:end]
        n = data.count(b"\n")
        return Chunk(self.stream, data, n, min(n, self.raw_complete))

    def head(self, max_bytes: int) -> tuple[Chunk | None, Chunk | None]:
        """The longest run of whole leading lines within max_bytes, and the rest."""
        cut = self.data.rfind(b"\n", 0, max(0, max_bytes)) + 1
        return self._part(0, cut), self._part(cut, len(self.data))

    def drop(self, min_bytes: int) -> tuple[int, int, Chunk | None]:
        """Drop the fewest leading lines holding at least min_bytes: (lines, bytes, the rest)."""
        cut = self.data.find(b"\n", max(0, min_bytes - 1)) + 1 or len(self.data)
        return self.data.count(b"\n", 0, cut), cut, self._part(cut, len(self.data))

    def skip_lines(self, n: int) -> Chunk | None:
        """Without its first n lines."""
        if n <= 0:
            return self
        if n >= self.lines:
            return None
        rest = self.data.split(b"\n", n)[-1]
        return self._part(len(self.data) - len(rest), len(self.data))


class LineSplitter:
    """Per-stream maskers and partial-line buffers. Secrets are masked in the byte stream before it
    is split, so neither a read boundary, nor the cut of a very long line into MAX_LINE_BYTES pieces,
    nor a secret spanning lines lets one through (masking keeps the number of lines). Invalid UTF-8
    is replaced with U+FFFD, and so is NUL."""

    def __init__(self, secrets: list[str]):
        self._partial: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._maskers = {1: Masker(secrets), 2: Masker(secrets)}

    def _chunk(self, stream: int, raw: bytes, complete: bool) -> Chunk:
        """Chunk of raw lines joined by b"\\n" (no trailing newline)."""
        text = raw.decode("utf-8", "replace")
        if "\x00" in text:  # no PostgreSQL text can hold NUL: repaired as invalid UTF-8 is, on every store
            text = text.replace("\x00", "\ufffd")
        data = text.encode("utf-8") + b"\n" if "\ufffd" in text else raw + b"\n"
        n = data.count(b"\n")
        return Chunk(stream, data, n, raw.count(b"\n") + 1 if complete else 0)

    def feed(self, stream: int, data: bytes) -> list[Chunk]:
        return self._split(stream, self._maskers[stream].feed(data))

    def _split(self, stream: int, data: bytes) -> list[Chunk]:
        if not data:
            return []
        buf = self._partial[stream]
        out: list[Chunk] = []
        end = data.rfind(b"\n")
        if end >= 0:
            if buf:
                buf += data[:end]
                whole = bytes(buf)
                buf.clear()
            else:
                whole = data[:end]
            buf += data[end + 1 :]
            out.extend(self._complete(stream, whole))
        else:
            buf += data
        while len(buf) > MAX_LINE_BYTES:
            cut = _utf8_cut(buf, MAX_LINE_BYTES)
            out.append(self._chunk(stream, bytes(buf[:cut]), False))
            del buf[:cut]
        return out

    def _complete(self, stream: int, whole: bytes) -> list[Chunk]:
        """Chunks of complete raw lines (joined by b"\\n"); over-long lines are cut into pieces."""
        if len(whole) <= MAX_LINE_BYTES:
            return [self._chunk(stream, whole, True)]
        raws = whole.split(b"\n")
        if max(map(len, raws)) <= MAX_LINE_BYTES:
            return [self._chunk(stream, whole, True)]
        out: list[Chunk] = []
        short: list[bytes] = []
        for raw in raws:
            if len(raw) <= MAX_LINE_BYTES:
                short.append(raw)
                continue
            if short:
                out.append(self._chunk(stream, b"\n".join(short), True))
                short = []
            while len(raw) > MAX_LINE_BYTES:
                cut = _utf8_cut(raw, MAX_LINE_BYTES)
                out.append(self._chunk(stream, raw[:cut], False))
                raw = raw[cut:]
            out.append(self._chunk(stream, raw, True))
        if short:
            out.append(self._chunk(stream, b"\n".join(short), True))
        return out

    def flush(self) -> list[Chunk]:
        """The unterminated last line of each stream, if any (at end of output)."""
        out = []
        for stream, buf in self._partial.items():
            out.extend(self._split(stream, self._maskers[stream].flush()))
            if buf:
                out.append(self._chunk(stream, bytes(buf), True))
                buf.clear()
        return out


@dataclass
class Bounded:
    """Head-and-tail bound on captured bytes: past `max_bytes/2` of head, lines go to a tail ring of
    at most `max_bytes/2`; what falls out of the ring is counted and replaced by one marker line."""

    max_bytes: int
    head_bytes: int = 0
    dropped_lines: int = 0
    dropped_bytes: int = 0
    tail: deque[Chunk] = field(default_factory=deque)
    tail_bytes: int = 0

    def admit(self, chunks: list[Chunk]) -> list[Chunk]:
        """Chunks to store now (head); the rest wait in the tail ring."""
        keep: list[Chunk] = []
        half = self.max_bytes // 2
        for chunk in chunks:
            if not self.tail and self.head_bytes < half:
                if self.head_bytes + chunk.nbytes <= half:
                    keep.append(chunk)
                    self.head_bytes += chunk.nbytes
                    continue
                head, rest = chunk.head(half - self.head_bytes)
                if head is not None:
                    keep.append(head)
                    self.head_bytes += head.nbytes
                if rest is None:
                    continue
                chunk = rest
            self.head_bytes = max(self.head_bytes, half)
            self.tail.append(chunk)
            self.tail_bytes += chunk.nbytes
            while self.tail_bytes > half:
                lines, nbytes, rest = self.tail[0].drop(self.tail_bytes - half)
                self.dropped_lines += lines
                self.dropped_bytes += nbytes
                self.tail_bytes -= nbytes
                if rest is None:
                    self.tail.popleft()
                else:
                    self.tail[0] = rest
        return keep

    def finish(self) -> Iterator[Chunk]:
        """At end of output: the marker (if anything was dropped), then the tail, each chunk let go
        of as it is taken (so storing the tail never holds it twice)."""
        if self.dropped_lines:
            text = (
                f"[agentfactory: {self.dropped_lines} lines ({self.dropped_bytes} bytes) dropped here: "
                f"output exceeded max_log_bytes={self.max_bytes}]"
            )
            yield Chunk.of_text(2, text, 0)
        while self.tail:
            chunk = self.tail.popleft()
            self.tail_bytes -= chunk.nbytes
            yield chunk
