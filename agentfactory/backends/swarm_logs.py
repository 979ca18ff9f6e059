"""A Swarm service's output, from its task's first line to its last, as `OutputSource` chunks.

A service's log stream (`/services/{id}/logs`) gives the task's output from its first line (the engine
keeps it in the task's json-file log, never rotated within max_log_bytes), but a following stream does
not end when the task does. `ServiceOutput` follows it while the task runs and, once the task has
ended, reads the whole log once more without following and hands on only the bytes it has not handed
on yet (counted per stream): nothing is lost at the end, nothing repeated. Restart recovery reads the
same source from the start; the log pump skips what it stored before.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import requests
import structlog
import urllib3.exceptions

from agentfactory.backends.base import STDERR, STDOUT

log = structlog.get_logger("agentfactory.swarm")
WATCH_SECONDS = 0.25  # how often a running task's state is read to see its end


def frames(data: bytes) -> Iterator[bytes]:
    """The payloads of a whole multiplexed log body (8-byte frame headers)."""
    pos = 0
    while len(data) - pos >= 8:
        size = int.from_bytes(data[pos + 4 : pos + 8], "big")
        yield data[pos + 8 : pos + 8 + size]
        pos += 8 + size


class ServiceOutput:
    """A service's output from its task's first line to its last, as `OutputSource` chunks."""

    def __init__(self, open_logs: Callable[[bool], Any], ended: Callable[[], bool]):
        self._open_logs = open_logs  # follow: bool -> (the streaming response, its socket)
        self._ended = ended  # whether the task has ended (or the service is gone)
        self._closed = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None

    def _shut(self) -> None:
        with self._lock:
            response = self._response
        if response is None:
            return
        response, sock = response
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _watch(self) -> None:
        while not self._closed.is_set() and not self._done.is_set():
            try:
                if self._ended():
                    self._done.set()
                    self._shut()
                    return
            except Exception as exc:  # the engine hiccups: keep following, try again
                log.debug("swarm_task_watch_failed", error=type(exc).__name__)
            self._closed.wait(WATCH_SECONDS)

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        consumed = {STDOUT: 0, STDERR: 0}
        threading.Thread(target=self._watch, name="swarm-task-watch", daemon=True).start()
        while not self._closed.is_set():
            follow = not self._done.is_set()
            opened = self._open_logs(follow)
            with self._lock:
                self._response = opened
            if follow and self._done.is_set():  # the task ended while the stream was being opened
                self._shut()
            response = opened[0]
            seen = {STDOUT: 0, STDERR: 0}
            raw = response.raw
            try:
                while True:
                    header = raw.read(8)
                    if len(header) < 8:
                        break
                    size = int.from_bytes(header[4:8], "big")
                    payload = raw.read(size) if size else b""
                    if len(payload) < size:
                        break
                    stream = STDERR if header[0] == 2 else STDOUT
                    start = seen[stream]
                    seen[stream] += size
                    if seen[stream] <= consumed[stream]:
                        continue
                    cut = max(0, consumed[stream] - start)
                    consumed[stream] = seen[stream]
                    yield stream, payload[cut:]
            except (OSError, requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException):
                if not follow:
                    raise  # the final read broke: the launcher records the capture as incomplete
                # else the socket was shut under us (the task ended, or close()), or the stream broke
                # off: read again (below)
            finally:
                with contextlib.suppress(Exception):
                    response.close()
            if not follow:
                return  # the whole log after the task's end: nothing more will come
            if not self._done.is_set() and not self._closed.is_set():
                self._closed.wait(WATCH_SECONDS)  # the stream broke off early: follow again

    def ended(self) -> bool:
        """`OutputSource.ended`: whether the task has ended (False when the engine cannot say: the
        output was cut while the task may run on, and the launcher hands it to the controller)."""
        if self._done.is_set():
            return True
        try:
            return bool(self._ended())
        except Exception:
            return False

    def close(self) -> None:
        self._closed.set()
        self._shut()
