"""Turning a container's byte chunks into stored log lines: splitting, masking, bounding. Pure."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_LINE_BYTES = 65_536
MASK = "***"


def _utf8_cut(data: bytes | bytearray, limit: int) -> int:
    """A cut position ≤ limit that does not split a UTF-8 sequence (when one can be found)."""
    cut = limit
    while cut > limit - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else limit


@dataclass
class Line:
    stream: int
    text: str
    nbytes: int  # len(text in UTF-8) + 1 for the newline: the seal's unit
    raw_complete: bool  # this line ends a raw line of the container (counts for resume)


class LineSplitter:
    """Per-stream partial-line buffers. A very long line is cut into MAX_LINE_BYTES pieces; invalid
    UTF-8 is replaced with U+FFFD. Secrets are masked on whole lines, so a secret split across two
    writes of one line is still masked."""

    def __init__(self, secrets: list[str]):
        self._partial: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def _line(self, stream: int, raw: bytes | bytearray, complete: bool) -> Line:
        text = bytes(raw).decode("utf-8", "replace")
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return Line(stream, text, len(text.encode("utf-8")) + 1, complete)

    def feed(self, stream: int, data: bytes) -> list[Line]:
        buf = self._partial[stream]
        out: list[Line] = []
        if b"\n" in data:
            parts = data.split(b"\n")
            first = parts[0]
            if buf:
                buf += first
                out.extend(self._chunked(stream, buf, True))
                buf.clear()
            else:
                out.extend(self._chunked(stream, first, True))
            for raw in parts[1:-1]:
                if len(raw) <= MAX_LINE_BYTES:
                    out.append(self._line(stream, raw, True))
                else:
                    out.extend(self._chunked(stream, raw, True))
            buf += parts[-1]
        else:
            buf += data
        while len(buf) > MAX_LINE_BYTES:
            cut = _utf8_cut(buf, MAX_LINE_BYTES)
            out.append(self._line(stream, buf[:cut], False))
            del buf[:cut]
        return out

    def _chunked(self, stream: int, raw: bytes | bytearray, complete: bool) -> list[Line]:
        out = []
        while len(raw) > MAX_LINE_BYTES:
            cut = _utf8_cut(raw, MAX_LINE_BYTES)
            out.append(self._line(stream, raw[:cut], False))
            raw = raw[cut:]
        out.append(self._line(stream, raw, complete))
        return out

    def flush(self) -> list[Line]:
        """The unterminated last line of each stream, if any (at end of output)."""
        out = []
        for stream, buf in self._partial.items():
            if buf:
                out.append(self._line(stream, buf, True))
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
    tail: deque[Line] = field(default_factory=deque)
    tail_bytes: int = 0

    @property
    def in_tail(self) -> bool:
        return self.head_bytes >= self.max_bytes // 2

    def admit(self, lines: list[Line]) -> list[Line]:
        """Lines to store now (head); the rest wait in the tail ring."""
        keep: list[Line] = []
        half = self.max_bytes // 2
        for line in lines:
            if self.head_bytes + line.nbytes <= half and not self.tail:
                keep.append(line)
                self.head_bytes += line.nbytes
                continue
            self.head_bytes = max(self.head_bytes, half)
            self.tail.append(line)
            self.tail_bytes += line.nbytes
            while self.tail_bytes > half and self.tail:
                old = self.tail.popleft()
                self.tail_bytes -= old.nbytes
                self.dropped_lines += 1
                self.dropped_bytes += old.nbytes
        return keep

    def finish(self) -> list[Line]:
        """At end of output: the marker (if anything was dropped) and the tail."""
        out: list[Line] = []
        if self.dropped_lines:
            text = (
                f"[agentfactory: {self.dropped_lines} lines ({self.dropped_bytes} bytes) dropped here: "
                f"output exceeded max_log_bytes={self.max_bytes}]"
            )
            out.append(Line(2, text, len(text.encode()) + 1, False))
        out.extend(self.tail)
        self.tail.clear()
        self.tail_bytes = 0
        return out
