"""Run an agent runtime process (on the host or via `docker run`) and collect its output as it comes."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Run:
    """One finished runtime process: exit code, stdout lines with their arrival time, stderr."""

    code: int
    lines: list[tuple[float, str]]
    stderr: str
    elapsed: float
    events: list[dict[str, Any]] = field(init=False)
    raw: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.events, self.raw = [], []
        for _, text in self.lines:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and "event" in parsed:
                self.events.append(parsed)
            else:
                self.raw.append(text)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


def collect(proc: subprocess.Popen[bytes], deadline: float = 60) -> Run:
    """Read the process's stdout line by line as it arrives; kill it at the deadline."""
    started = time.monotonic()
    killer = threading.Timer(deadline, proc.kill)
    killer.start()
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()))  # type: ignore[union-attr]
    reader.start()
    lines = [
        (time.monotonic() - started, line.decode().rstrip("\n"))
        for line in iter(proc.stdout.readline, b"")  # type: ignore[union-attr]
    ]
    code = proc.wait()
    killer.cancel()
    reader.join(5)
    assert time.monotonic() - started < deadline, "the runtime was killed at the test deadline"
    return Run(code, lines, b"".join(stderr).decode(), time.monotonic() - started)
