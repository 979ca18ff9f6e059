"""A Server-Sent Events parser that follows the WHATWG algorithm on raw bytes.

Lines end at CRLF, LF or CR only, so a U+2028 or NEL inside a data line is text, not a line break.
Used by the HTTP client to follow an agent's stream and the events feed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    event: str
    data: str
    id: str | None
    retry: int | None = None


class SSEDecoder:
    """Turns SSE lines into events (https://html.spec.whatwg.org/multipage/server-sent-events.html)."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self._event = ""
        self._data: list[str] = []
        self._retry: int | None = None

    def feed(self, line: str) -> SSEEvent | None:
        """One line without its terminator; returns an event when `line` is the blank line ending one."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        event, data, retry = self._event or "message", self._data, self._retry
        self._event, self._data, self._retry = "", [], None
        if not data:
            return None
        return SSEEvent(event=event, data="\n".join(data), id=self.last_event_id, retry=retry)


class SSELineSplitter:
    """SSE line splitting, fed chunk by chunk (by a sync or an async byte stream alike)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
        buf = self._buf
        buf += chunk
        lines: list[str] = []
        start = 0
        while (m := _LINE_END.search(buf, start)) is not None:
            if m.group() == b"\r" and m.end() == len(buf):
                break  # maybe the first half of a CRLF split across chunks
            lines.append(buf[start : m.start()].decode("utf-8", "replace"))
            start = m.end()
        del buf[:start]
        return lines

    def close(self) -> list[str]:
        """The end of the stream: a last line ended by a lone CR; an unterminated one is dropped."""
        buf, self._buf = self._buf, bytearray()
        return [buf[:-1].decode("utf-8", "replace")] if buf.endswith(b"\r") else []


def split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """SSE line splitting on a byte stream; an unterminated last line is dropped (it ends no event)."""
    splitter = SSELineSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.close()


class SSEParser:
    """Bytes in, events out: the line splitter and the decoder, with the stream's leading BOM removed."""

    def __init__(self) -> None:
        self._splitter = SSELineSplitter()
        self._decoder = SSEDecoder()
        self._first = True

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return self._events(self._splitter.feed(chunk))

    def close(self) -> list[SSEEvent]:
        return self._events(self._splitter.close())

    def _events(self, lines: list[str]) -> list[SSEEvent]:
        events = []
        for line in lines:
            if self._first:
                line, self._first = line.removeprefix("\ufeff"), False
            if (event := self._decoder.feed(line)) is not None:
                events.append(event)
        return events


def iter_sse(chunks: Iterable[bytes]) -> Iterator[SSEEvent]:
    parser = SSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()
