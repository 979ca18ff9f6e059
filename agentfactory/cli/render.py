"""How the client commands print: JSON, tables and field lists, error lines, and an agent's output with
the `--follow` status line.

Everything decorative is drawn by rich and only where it can be seen: tables get colour only on a
terminal (and never under NO_COLOR); the status line (a rich `Live`) only when stderr is a terminal,
NO_COLOR is unset and TERM is not `dumb`. Anywhere else the output holds no control codes at all.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.control import Control, ControlType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from agentfactory.client import ApiError

STATUS_REFRESH_SECONDS = 0.2

# --- JSON, tables, fields ----------------------------------------------------------------------------


def _console() -> Console:
    # Not a terminal: no colour, and no width limit so that piped tables never truncate ids.
    return Console(width=None if sys.stdout.isatty() else 1000, highlight=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def to_yaml(obj: Any, indent: int = 0) -> str:
    """JSON-shaped data (dicts, lists, strings, numbers, booleans, None) as block YAML. Strings are
    double-quoted JSON strings (valid YAML), so no value can be misread as another type."""
    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        out = []
        for key, value in obj.items():
            name = _yaml_key(str(key))
            if isinstance(value, dict | list) and value:
                out.append(f"{pad}{name}:\n{to_yaml(value, indent + 1)}")
            else:
                out.append(f"{pad}{name}: {_yaml_scalar(value)}\n")
        return "".join(out)
    if isinstance(obj, list):
        if not obj:
            return pad + "[]\n"
        out = []
        for value in obj:
            if isinstance(value, dict | list) and value:
                nested = to_yaml(value, indent + 1)
                out.append(f"{pad}- {nested.lstrip()}")
            else:
                out.append(f"{pad}- {_yaml_scalar(value)}\n")
        return "".join(out)
    return pad + _yaml_scalar(obj) + "\n"


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _yaml_key(key: str) -> str:
    plain = _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML_WORDS
    return key if plain else json.dumps(key, ensure_ascii=False)


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return json.dumps(str(value), ensure_ascii=False)


def print_yaml(obj: Any) -> None:
    sys.stdout.write(to_yaml(obj))


def print_doc(obj: Any, fmt: str) -> None:
    """A document as `json` or `yaml`."""
    print_yaml(obj) if fmt == "yaml" else print_json(obj)


def print_names(ids: list[str]) -> None:
    sys.stdout.write("".join(f"{i}\n" for i in ids))


def print_event(name: str, **fields: Any) -> None:
    """One `--follow --json` event: a JSON object on one line of stdout."""
    sys.stdout.write(json.dumps({"event": name, **fields}, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _when(value: Any) -> datetime | None:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def age(seconds: float) -> str:
    """`75` → `1m`: the largest whole unit."""
    seconds = abs(int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def ago(value: Any) -> str:
    moment = _when(value)
    return age(time.time() - moment.timestamp()) if moment else "-"


def cell(key: str, value: Any) -> str:
    """One value as table text; `*_at` timestamps also say how far away they are."""
    if value is None or value == [] or value == {}:
        return "-"
    if key.endswith("_at") and (moment := _when(value)) is not None:
        delta = moment.timestamp() - time.time()
        relative = f"in {age(delta)}" if delta > 0 else f"{age(delta)} ago"
        return f"{moment.strftime('%Y-%m-%d %H:%M:%S')}Z ({relative})"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _flatten(doc: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in doc.items():
        if isinstance(value, dict) and value and key not in ("metadata", "env"):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def print_fields(doc: dict[str, Any], first: tuple[str, ...] = (), skip: tuple[str, ...] = ("links",)) -> None:
    """A document as `key value` rows (nested keys dotted), the `first` keys at the top."""
    ordered = {k: doc[k] for k in first if k in doc} | {k: v for k, v in doc.items() if k not in skip}
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in _flatten(ordered):
        table.add_row(key, cell(key, value))
    _console().print(table)


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, no_wrap=name in ("ID", "NAME"), overflow="fold")
    for row in rows:
        table.add_row(*row)
    _console().print(table)


# --- error lines -------------------------------------------------------------------------------------


def _detail(detail: Any) -> str | None:
    """The part of one error detail a person needs (the message already names the first problem)."""
    if not isinstance(detail, dict):
        return None
    if "msg" in detail:
        where = ".".join(str(p) for p in detail.get("loc", []) if p != "body")
        return f"{where}: {detail['msg']}" if where else str(detail["msg"])
    for key in ("known", "allowed"):
        if isinstance(detail.get(key), list):
            return f"{key}: {', '.join(str(v) for v in detail[key])}"
    return None


def api_message(exc: ApiError) -> str:
    """An error envelope as one line: code, message, status, the useful details, retry and request id."""
    text = f"{exc.code}: {exc.message} ({exc.status})"
    details = exc.details if isinstance(exc.details, list) else []
    parts = [p for p in map(_detail, details[:5]) if p and p not in exc.message]
    if parts:
        text += " — " + "; ".join(parts)[:400]
    if exc.retry_after:
        text += f"; retry after {exc.retry_after}s"
    if exc.status >= 500 and exc.request_id:
        text += f" [request {exc.request_id}]"
    if exc.hint:
        text += f"; {exc.hint}"
    return text


# --- an agent's output and the status line -----------------------------------------------------------


def status_line_allowed() -> bool:
    """A live line needs cursor control: a terminal stderr, NO_COLOR unset (https://no-color.org), TERM
    not `dumb`. Decided here, not by rich, which would also draw for FORCE_COLOR into a CI log."""
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


class StatusLine:
    """One dim row kept below the output on a terminal's stderr, redrawn every 0.2 s by a thread.

    Whoever writes to the terminal does so inside `above()`: the row is hidden first, and the next
    tick draws it again below what was written. A disabled StatusLine draws nothing and costs nothing.
    """

    def __init__(self, describe: Callable[[], str], *, enabled: bool):
        self._describe = describe
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._shown = False
        self._live: Live | None = None
        if enabled:
            self._console = Console(stderr=True, force_terminal=True, highlight=False)
            self._live = Live(console=self._console, auto_refresh=False, transient=True,
                              redirect_stdout=False, redirect_stderr=False)  # fmt: skip
            self._frames = Spinner("dots").frames
            threading.Thread(target=self._refresh, args=(self._live,), name="af-status-line", daemon=True).start()

    @contextmanager
    def above(self) -> Iterator[None]:
        with self._lock:
            if self._live is not None and self._shown:
                sys.stdout.flush()  # stdout may be the same terminal: its lines first, then the erase
                self._live.update(Text(""), refresh=True)
                self._shown = False
            yield

    def close(self) -> None:
        """Erases the row for good (the cursor ends at its start) and stops the thread."""
        self._stop.set()
        with self._lock:
            self._shown = False
            if self._live is not None and self._live.is_started:
                self._live.stop()
                # stop() ends with cursor moves; end where the old hand-drawn line did: an erased row, column 0.
                self._console.control(Control(ControlType.CARRIAGE_RETURN, (ControlType.ERASE_IN_LINE, 2)))

    def _refresh(self, live: Live) -> None:
        tick = 0
        while not self._stop.wait(STATUS_REFRESH_SECONDS):
            frame = self._frames[tick % len(self._frames)]
            # One row at most (cut with an ellipsis): a row that wrapped could not be hidden whole.
            text = Text(f"{frame} {self._describe()}", style="dim", no_wrap=True, overflow="ellipsis")
            tick += 1
            with self._lock:
                if self._stop.is_set():
                    return
                sys.stdout.flush()
                if not live.is_started:
                    live.start()
                live.update(text, refresh=True)
                self._shown = True


class FollowOutput:
    """Writes an agent's lines (stdout→stdout, stderr→stderr) and, where allowed, a live status line
    below them. With `json_lines`, every event is one JSON object on stdout and nothing is decorative."""

    def __init__(
        self,
        agent_id: str,
        *,
        json_lines: bool,
        streams: tuple[str, ...] = ("stdout", "stderr"),
        status_line: bool = False,
    ):
        self.agent_id, self.json_lines, self.streams = agent_id, json_lines, streams
        self.state, self.lines, self.started = "connecting", 0, time.monotonic()
        self.queue: tuple[int | None, float | None] | None = None  # while queued: position, estimated start
        enabled = status_line and not json_lines and status_line_allowed()
        self._status = StatusLine(self._describe, enabled=enabled)

    def line(self, line: dict[str, Any]) -> None:
        self.lines += 1
        if line.get("stream", "stdout") not in self.streams:
            return
        if self.json_lines:
            return print_event("log", **line)
        out = sys.stderr if line.get("stream") == "stderr" else sys.stdout
        with self._status.above():
            out.write(f"{line.get('text', '')}\n")
            out.flush()

    def status(self, agent: dict[str, Any]) -> None:
        was_queued = self.queue is not None
        self.state = str(agent.get("status"))
        self.queue = None
        if self.state == "queued":
            self.queue = (agent.get("queue_position"), parse_time(agent.get("estimated_start_at")))
        if self.json_lines:
            print_event("status", agent=agent)
        elif self.queue is not None and not was_queued:  # once, for a CI log that has no status line
            self.note(f"{self.agent_id} {queue_state(*self.queue, now=time.time())}")

    def retry(self, attempt: int, delay: float, cause: str) -> None:
        self.state = f"reconnecting in {delay:.1f}s (attempt {attempt}: {cause})"

    def note(self, message: str) -> None:
        with self._status.above():
            sys.stderr.write(f"agentfactory: {message}\n")
            sys.stderr.flush()

    def close(self) -> None:
        self._status.close()

    def _describe(self) -> str:
        state = self.state if self.queue is None else queue_state(*self.queue, now=time.time())
        return f"{self.agent_id} {state} · {self.lines} lines · {age(time.monotonic() - self.started)}"


def parse_time(value: object) -> float | None:
    """An API timestamp (ISO 8601, `Z`) as epoch seconds; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def queue_state(position: int | None, estimated_start: float | None, *, now: float) -> str:
    """ "queued, position 3, starts in ~40 s": a queued agent's place and its estimated start."""
    words = "queued" if position is None else f"queued, position {position}"
    if estimated_start is None:
        return words
    left = estimated_start - now
    return f"{words}, starts in ~{round(left)} s" if left >= 1 else f"{words}, starts any moment"
