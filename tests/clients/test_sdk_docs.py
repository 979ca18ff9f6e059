"""docs/sdk.md's examples run, each in its own interpreter, against a live server (SPEC §15)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.clients.docs_examples import ROOT, python_blocks, run_block
from tests.support.server import ServerProcess

pytestmark = pytest.mark.docker
BLOCKS = python_blocks(ROOT / "docs" / "sdk.md")


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 5
    assert any("AsyncAgentFactory" in b for b in BLOCKS) and any(".follow(" in b for b in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_sdk_example_runs(server: ServerProcess, tmp_path: Path, index: int) -> None:
    proc = run_block(sys.executable, BLOCKS[index], url=server.url, api_key=server.admin_key, cwd=tmp_path)
    assert proc.returncode == 0, f"example {index + 1} of docs/sdk.md:\n{BLOCKS[index]}\n{proc.stdout}\n{proc.stderr}"
