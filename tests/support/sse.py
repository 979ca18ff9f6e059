"""A plain SSE reader for tests (the wire format of the HTML living standard)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    event: str
    id: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def iter_events(response: httpx.Response) -> Iterator[Event]:
    event, eid, data = "message", None, []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield Event(event, eid, "\n".join(data))
            event, eid, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "id":
                eid = value
            elif name == "data":
                data.append(value)


def read_stream(
    client: httpx.Client, agent_id: str, *, params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None, stop_after_logs: int | None = None,
) -> tuple[list[dict[str, Any]], Event | None]:  # fmt: skip
    """(log lines, end event or None when stopped early) of one stream connection."""
    lines: list[dict[str, Any]] = []
    with client.stream("GET", f"/agents/{agent_id}/stream", params=params, headers=headers, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for ev in iter_events(r):
            if ev.event == "log":
                item = ev.json()
                assert ev.id == str(item["seq"])
                lines.append(item)
                if stop_after_logs is not None and len(lines) >= stop_after_logs:
                    return lines, None
            elif ev.event == "end":
                return lines, ev
    raise AssertionError("the stream closed without an end event")
