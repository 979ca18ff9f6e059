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


def split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """SSE line splitting on a byte stream; an unterminated last line is dropped (it ends no event)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        start = 0
        while (m := _LINE_END.search(buf, start)) is not None:
            if m.group() == b"\r" and m.end() == len(buf):
                break  # maybe the first half of a CRLF split across chunks
            yield buf[start : m.start()].decode("utf-8", "replace")
            start = m.end()
        del buf[:start]
    if buf.endswith(b"\r"):
        yield buf[:-1].decode("utf-8", "replace")


def iter_sse(chunks: Iterable[bytes]) -> Iterator[SSEEvent]:
    decoder = SSEDecoder()
    first = True
    for line in split_lines(chunks):
        if first:
            line, first = line.removeprefix("\ufeff"), False
        event = decoder.feed(line)
        if event is not None:
            yield event


# --- HTTP API ----------------------------------------------------------------------------------------
