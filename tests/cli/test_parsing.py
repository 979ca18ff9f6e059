"""Pure parts of the CLI: durations, KEY=VALUE pairs, the SSE parser, exit codes, error lines."""

from __future__ import annotations

import os
import subprocess

import pytest
import typer

from agentfactory.cli.options import parse_duration, parse_pairs
from agentfactory.cli.render import api_message as _api_message
from agentfactory.client import ApiError, SSEDecoder, SSEEvent, agent_exit_code, iter_sse, split_lines
from tests.cli.conftest import AGENTFACTORY


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("2d", 172800), (" 5M ", 300)],
)
def test_parse_duration_accepts_plain_seconds_and_units(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5", "5x", "m", "1.5h", "10 m", "h1"])
def test_parse_duration_refuses_what_is_not_a_positive_duration(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_duration(text)


def test_parse_pairs_keeps_equals_signs_in_values_and_refuses_missing_ones() -> None:
    assert parse_pairs(["A=1", "B=x=y", "C="], "--env") == {"A": "1", "B": "x=y", "C": ""}
    assert parse_pairs(None, "--env") == {}
    for bad in ("A", "=1"):
        with pytest.raises(typer.BadParameter):
            parse_pairs([bad], "--env")


def _events(text: str) -> list[SSEEvent]:
    return list(iter_sse([text.encode()]))


def test_sse_fields_multiline_data_comments_and_ids() -> None:
    stream = (
        ": keep-alive\n\n"
        'event: log\nid: 1\ndata: {"seq": 1}\n\n'
        "data: first\ndata:second\ndata\n\n"
        "event: end\ndata: {}\n\n"
    )
    assert _events(stream) == [
        SSEEvent("log", '{"seq": 1}', "1"),
        SSEEvent("message", "first\nsecond\n", "1"),  # the id persists, as the spec says
        SSEEvent("end", "{}", "1"),
    ]


def test_sse_line_endings_cr_crlf_and_bom() -> None:
    assert _events("\ufeffevent: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\r") == [
        SSEEvent("a", "1", None),
        SSEEvent("b", "2", None),
    ]


def test_sse_event_without_its_blank_line_is_never_dispatched() -> None:
    assert _events('event: log\nid: 1\ndata: {"seq": 1}\n\nevent: log\nid: 2\ndata: {"seq": 2}\n') == [
        SSEEvent("log", '{"seq": 1}', "1")
    ]


def test_sse_ignores_unknown_fields_bad_retry_and_ids_with_nul() -> None:
    decoder = SSEDecoder()
    for line in ["id: a\0b", "retry: soon", "foo: bar", "data: x"]:
        assert decoder.feed(line) is None
    assert decoder.feed("") == SSEEvent("message", "x", None)
    for line in ["retry: 1500", "data: y"]:
        decoder.feed(line)
    assert decoder.feed("") == SSEEvent("message", "y", None, retry=1500)


def test_split_lines_across_chunk_boundaries_including_a_split_crlf() -> None:
    chunks = [b"da", b"ta: 1\r", b"\ndata: \xe2\x82", b"\xac\n", b"\r", b"last\n"]
    assert list(split_lines(chunks)) == ["data: 1", "data: €", "", "last"]


def test_split_lines_does_not_break_on_unicode_line_separators() -> None:
    text = 'data: {"text": "a\u2028b\u0085c\x0cd"}\n'
    assert list(split_lines([text.encode()])) == [text[:-1]]


@pytest.mark.parametrize(
    ("agent", "code"),
    [
        ({"status": "succeeded", "exit_code": 0}, 0),
        ({"status": "failed", "exit_code": 7}, 7),
        ({"status": "failed", "exit_code": None, "reason": "launch_failed"}, 1),
        ({"status": "failed", "exit_code": 0, "reason": "lost"}, 1),
        ({"status": "failed", "exit_code": 300}, 1),
        ({"status": "failed", "exit_code": 69}, 1),  # 64-78 are the CLI's own failures
        ({"status": "failed", "exit_code": 137, "reason": "oom_killed"}, 137),
        ({"status": "expired", "exit_code": 137}, 124),
        ({"status": "cancelled", "exit_code": 143}, 130),
    ],
)
def test_agent_exit_code_mirrors_the_verdict(agent: dict[str, object], code: int) -> None:
    assert agent_exit_code(agent) == code


def test_api_error_line_carries_code_status_details_and_retry_after() -> None:
    details = [{"loc": ["body", "ttl"], "msg": "too big"}, {"loc": ["body", "x"], "msg": "extra"}]
    err = ApiError(422, "E_SCHEMA", "ttl: too big", details=details)
    assert _api_message(err) == "E_SCHEMA: ttl: too big (422) — x: extra"
    err = ApiError(422, "E_CATALOG", "unknown model 'x'", details=[{"field": "model", "known": ["echo", "gpt"]}])
    assert _api_message(err) == "E_CATALOG: unknown model 'x' (422) — known: echo, gpt"
    err = ApiError(422, "E_SCHEMA", "ttl too big", details=[{"loc": ["body", "ttl_seconds"], "max": 3600}])
    assert _api_message(err) == "E_SCHEMA: ttl too big (422)"
    err = ApiError(429, "E_QUOTA", "too many agents", retry_after="12")
    assert _api_message(err) == "E_QUOTA: too many agents (429); retry after 12s"
    err = ApiError(500, "E_INTERNAL", "a bug", request_id="req_9")
    assert _api_message(err) == "E_INTERNAL: a bug (500) [request req_9]"


def test_usage_errors_exit_64_before_any_request() -> None:
    cases = [
        ["--url", "http://127.0.0.1:9", "run", "--model", "echo", "--ttl", "ten", "hi"],
        ["--url", "http://127.0.0.1:9", "run", "hi"],
        ["--url", "http://127.0.0.1:9", "run", "--model", "echo", "--env", "NOEQUALS", "hi"],
        ["--url", "http://127.0.0.1:9", "run", "--model", "echo", "--secret-env", "AF_SURELY_UNSET", "hi"],
        ["--url", "http://127.0.0.1:9", "run", "--model", "echo", "   "],
        ["--url", "http://127.0.0.1:9", "logs", "ag_1", "--stream", "both"],
        ["--url", "http://127.0.0.1:9", "ls", "--limit", "501"],
        ["--url", "http://127.0.0.1:9", "ls", "-o", "table"],
        ["--url", "http://127.0.0.1:9", "ls", "-l", "novalue"],
        ["--url", "http://127.0.0.1:9", "no-such-command"],
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFACTORY_") and k != "AF_SURELY_UNSET"}
    for args in cases:
        proc = subprocess.run([AGENTFACTORY, *args], capture_output=True, text=True, env=env, timeout=30, check=False)
        assert proc.returncode == 64, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stdout == ""
