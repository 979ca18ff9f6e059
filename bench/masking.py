"""Splitting with masking: MB/s of LineSplitter.feed over 200 MB of one kind of output, with three
secrets (a short token, a gateway-like token, a 3-line PEM-like key) and with none (the baseline).

  lines             65 KB reads of 100-byte lines (a flood)
  one long line     65 KB reads with no newline (the 64 KiB cut path)
  pem prefixes      the PEM's first line over and over: every read ends in a tail held back
  near misses       "ab" * 32000 against a secret "ab" * 4000 + "Z": the held tail at its worst

    .venv/bin/python bench/masking.py [--mb 200]
"""

from __future__ import annotations

import argparse
import time

from agentfactory.runtime.lines import LineSplitter

SECRETS = [
    "s3cr3t-Zq81xv",
    "tok-" + "A" * 39,
    "-----BEGIN X-----\n" + "A" * 64 + "\n-----END X-----",
    "ab" * 4000 + "Z",
]
KINDS = {
    "lines": b"%099d\n" % 7 * 650,
    "one long line": b"x" * 65_000,
    "pem prefixes": b"-----BEGIN X-----\n" * 3600,
    "near misses": b"ab" * 32_000,
}


def rate(secrets: list[str], data: bytes, total: int) -> float:
    splitter, n, started = LineSplitter(secrets), 0, time.perf_counter()
    while n < total:
        splitter.feed(1, data)
        n += len(data)
    return n / (time.perf_counter() - started) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    total = parser.parse_args().mb * 1_000_000
    for kind, data in KINDS.items():
        bare, masked = rate([], data, total), rate(SECRETS, data, total)
        print(f"{kind:14} no secrets {bare:6.0f} MB/s   4 secrets {masked:6.0f} MB/s   ratio {masked / bare:.2f}")


if __name__ == "__main__":
    main()
