"""Agents that run what a test asks: a fake model that turns the prompt into one `shell` call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fakes.fake_openai import FakeOpenAI, Responder, completion, tool_call, tool_messages

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY_ENV = "AF_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-test-upstream-9f3b2c71"


def prompt_as_shell() -> Responder:
    """First turn: run the user's prompt with the shell tool; then a final answer."""

    def respond(body: Any) -> dict[str, Any]:
        if tool_messages(body):
            return completion("done", usage=(5, 1))
        prompt = next(m["content"] for m in body["messages"] if m.get("role") == "user")
        return completion(None, [tool_call("shell", {"command": prompt})], usage=(5, 1))

    return respond


def write_catalog(path: Path, upstream: FakeOpenAI | None, *, limits: dict[str, Any] | None = None,
                  extra_models: list[dict[str, Any]] | None = None) -> Path:  # fmt: skip
    """catalog.json plus a model `sh` (the prompt runs as a shell command) on the fake upstream."""
    raw = json.loads((ROOT / "catalog.json").read_text())
    raw["limits"].update(limits or {})
    if upstream is not None:
        raw["models"].append(
            {"id": "sh", "provider": "openai", "base_url": upstream.base_url, "api_key_env": UPSTREAM_KEY_ENV}
        )
    raw["models"].extend(extra_models or [])
    path.write_text(json.dumps(raw))
    return path
