"""Print the control plane's OpenAPI document (JSON) without starting it: no database, no engine.

Usage: .venv/bin/python scripts/openapi.py > openapi.json   (clients/typescript generates its types from it)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from agentfactory.app import create_app
from agentfactory.backends.fake import FakeBackend
from agentfactory.settings import Settings


def openapi_document() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite:///{Path(tmp) / 'unused.db'}",
            catalog=Path(__file__).resolve().parents[1] / "catalog.json",
            gateway_socket_dir=Path(tmp) / "gw",
        )
        return create_app(settings, backend=FakeBackend(), run_loops=False).openapi()


if __name__ == "__main__":
    json.dump(openapi_document(), sys.stdout, indent=2)
    sys.stdout.write("\n")
