"""An agent flooding the model gateway with its own token, as a separate process (its CPU is not the test's).

    python -m tests.support.gateway_flood SOCKET TOKEN OUT.json [--seconds S] [--attacks a,b]
    python -m tests.support.gateway_flood SOCKET TOKEN --serve

Rounds of three attacks, repeated until S seconds have passed (at least one whole round); with
--serve, one attack per name read on stdin, its outcome written as a JSON line on stdout:
  bodies:      1,000 connections at once, each posting a 4 MiB body
  huge:        a 32 MiB body with a Content-Length, and one sent chunked
  connections: 10,000 connections opened at once and held, then each sends a small call
Every outcome is counted per attack: the HTTP status the gateway answered, "reset"/"closed" when it
closed the connection instead, "connect_failed" when the connection could not be made. Bounded in
count and time; talks only to the given Unix socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
CHUNK = b"x" * 65536
CONNECT_TIMEOUT = 10.0
ANSWER_TIMEOUT = 30.0


def chat_head(token: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


# A valid chat body of any size: PREFIX, x's, SUFFIX.
PREFIX, SUFFIX = b'{"messages":[{"role":"user","content":"', b'"}]}'


def status_of(data: bytes) -> str:
    if not data:
        return "closed"
    parts = data.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 else "garbage"


async def post(path: str, token: str, size: int, *, chunked: bool = False) -> str:
    """Post a `size`-byte body; stop sending as soon as the gateway answers."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), CONNECT_TIMEOUT)
    except (OSError, TimeoutError):
        return "connect_failed"
    answer = asyncio.ensure_future(reader.read(65536))
    try:
        prefix, suffix = PREFIX, SUFFIX
        writer.write(chat_head(token, None if chunked else size))
        pieces = [prefix] + [CHUNK] * ((size - len(prefix) - len(suffix)) // len(CHUNK))
        for piece in pieces:
            if answer.done():
                break
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            await writer.drain()
        if not answer.done():
            padding = size - len(prefix) - len(suffix) - (len(pieces) - 1) * len(CHUNK)
            tail = b"x" * padding + suffix
            writer.write(f"{len(tail):x}\r\n".encode() + tail + b"\r\n0\r\n\r\n" if chunked else tail)
            await writer.drain()
        return status_of(await asyncio.wait_for(answer, ANSWER_TIMEOUT))
    except (ConnectionResetError, BrokenPipeError):
        if answer.done() and not answer.cancelled() and answer.exception() is None:
            return status_of(answer.result())
        try:
            return status_of(await asyncio.wait_for(answer, 1))
        except (OSError, TimeoutError):
            return "reset"
    except TimeoutError:
        return "timeout"
    except OSError:  # EINVAL: a connect the full listen queue left unfinished
        return "connect_failed"
    finally:
        answer.cancel()
        writer.close()


async def bodies(path: str, token: str) -> Counter[str]:
    results = await asyncio.gather(*(post(path, token, 4 * MiB) for _ in range(1000)))
    return Counter(results)


async def huge(path: str, token: str) -> Counter[str]:
    results = await asyncio.gather(post(path, token, 32 * MiB), post(path, token, 32 * MiB, chunked=True))
    return Counter(results)


async def hold_then_call(path: str, token: str, hold: asyncio.Event) -> str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), CONNECT_TIMEOUT)
    except (OSError, TimeoutError):
        return "connect_failed"
    try:
        await hold.wait()
        body = b'{"messages":[{"role":"user","content":"hi"}]}'
        writer.write(chat_head(token, len(body)) + body)
        await writer.drain()
        return status_of(await asyncio.wait_for(reader.read(65536), ANSWER_TIMEOUT))
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except TimeoutError:
        return "timeout"
    except OSError:  # EINVAL: a connect the full listen queue left unfinished
        return "connect_failed"
    finally:
        writer.close()


async def connections(path: str, token: str) -> Counter[str]:
    hold = asyncio.Event()
    tasks = [asyncio.ensure_future(hold_then_call(path, token, hold)) for _ in range(10_000)]
    await asyncio.sleep(2)  # all connects issued and held
    hold.set()
    return Counter(await asyncio.gather(*tasks))


ATTACKS = {"bodies": bodies, "huge": huge, "connections": connections}


async def flood(path: str, token: str, seconds: float, names: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    totals: dict[str, Counter[str]] = {name: Counter() for name in names}
    rounds = 0
    while rounds == 0 or time.monotonic() - started < seconds:
        for name in names:
            totals[name] += await ATTACKS[name](path, token)
        rounds += 1
    return {"rounds": rounds, "seconds": round(time.monotonic() - started, 2)} | {
        name: dict(counts) for name, counts in totals.items()
    }


async def serve(path: str, token: str) -> None:
    """Attack on demand, so a test can interleave quiet and attacked windows."""
    loop = asyncio.get_running_loop()
    while name := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        counts = await ATTACKS[name](path, token)
        print(json.dumps({"attack": name, "outcomes": dict(counts)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("token")
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated, of: " + ", ".join(ATTACKS))
    parser.add_argument("--serve", action="store_true", help="attack as told on stdin")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.socket, args.token))
        return
    result = asyncio.run(flood(args.socket, args.token, args.seconds, args.attacks.split(",")))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
