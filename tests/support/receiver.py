"""A webhook receiver on a loopback port, run by the test: it records every request and answers
what the test's `respond` function says; it can go down (stop listening) and come back on its port."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.server import free_port


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    nth: int  # 1 for the first request carrying this webhook-id, 2 for the second...

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


# (the request) -> (HTTP status, seconds to wait before answering)
Respond = Callable[[Received], tuple[int, float]]


def always(status: int) -> Respond:
    return lambda _r: (status, 0.0)


class Receiver:
    def __init__(self, respond: Respond = always(204)):
        self.respond = respond
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    msg = headers.get("webhook-id", "")
                    receiver._seen[msg] = receiver._seen.get(msg, 0) + 1
                    got = Received(headers=headers, body=body, at=time.time(), nth=receiver._seen[msg])
                    receiver.received.append(got)
                status, delay = receiver.respond(got)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up (a timeout): as a real slow receiver would see
                    pass

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused until `start()` again (same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)
