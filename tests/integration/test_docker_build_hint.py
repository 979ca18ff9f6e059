"""A plain `docker build .` (what most people type first) without ./wheelhouse fails at once and names
`make image`, instead of stopping at a COPY with no hint."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.server import ROOT

pytestmark = pytest.mark.docker


def test_docker_build_without_the_wheelhouse_names_make_image(tmp_path: Path, docker_engine: None) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for name in (
        "Dockerfile",
        ".dockerignore",
        "pyproject.toml",
        "poetry.lock",
        "README.md",
        "LICENSE",
        "catalog.json",
    ):
        shutil.copy(ROOT / name, context / name)
    started = time.monotonic()
    proc = subprocess.run(
        ["docker", "build", "--network", "none", "--no-cache", "--force-rm",
         "-t", "agentfactory-build-hint:test", str(context)],
        capture_output=True, text=True, timeout=300, check=False, env={"PATH": "/usr/bin:/bin", "DOCKER_BUILDKIT": "0"},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Build this image with `make image`" in proc.stdout + proc.stderr
    assert "COPY failed" not in proc.stdout + proc.stderr
    assert time.monotonic() - started < 120
