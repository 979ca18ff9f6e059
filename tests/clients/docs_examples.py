"""The ```python blocks of a Markdown page, and running one against a live server."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def python_blocks(page: Path) -> list[str]:
    return _BLOCK.findall(page.read_text())


def run_block(python: str, code: str, *, url: str, api_key: str, cwd: Path, timeout: float = 180):
    """Runs one example as a user would: its own interpreter, the server and key from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFACTORY_", "PYTHON"))}
    env |= {"AGENTFACTORY_URL": url, "AGENTFACTORY_API_KEY": api_key, "AGENTFACTORY_CONFIG": str(cwd / "none.toml")}
    return subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip
