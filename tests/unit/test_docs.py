"""The docs stay true to the code: every route is in docs/api.md's table, every relative link of the
README and docs/ leads somewhere, and the README keeps its two set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.openapi import openapi_document

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_operation_is_in_the_route_table() -> None:
    table = (ROOT / "docs" / "api.md").read_text()
    for path, operations in openapi_document()["paths"].items():  # type: ignore[attr-defined]
        for method, operation in operations.items():
            row = f"`{method.upper()} {path.replace('{agent_id}', '{id}').replace('{key_id}', '{id}')}`"
            assert row in table or f"`{operation['operationId']}`" in table, f"{row} is not in docs/api.md"


def test_relative_links_resolve() -> None:
    for page in PAGES:
        if page.name == "spec.md":
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}"


def test_the_readme_keeps_its_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith(
        "# agentfactory\n\n```sh\n"
        "make up      # deps, Docker Engine if absent, images, then the control plane on 127.0.0.1:8000 (SQLite)\n"
        "make test    # the whole test suite, against the real Docker Engine\n```\n"
    )
