"""A bad catalog refuses to start and names the file and the field."""

import json
from pathlib import Path

import pytest

from agentfactory.catalog import load_catalog
from agentfactory.errors import CatalogError, CatalogInvalid, SchemaError

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_catalog_is_valid() -> None:
    cat = load_catalog(ROOT / "catalog.json")
    assert cat.model("echo") is not None
    assert cat.needs_network(["browser_server"]) and not cat.needs_network(["python"])


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c["models"][1].pop("base_url"), "models.1"),
        (lambda c: c["limits"].update(memory_mb="lots"), "limits.memory_mb"),
        (lambda c: c["tools"].append({"id": "python"}), "duplicate tools"),
        (lambda c: c.update(version=2), "version"),
        (lambda c: c["models"][0].update(colour="red"), "models.0.colour"),
    ],
)
def test_invalid_catalog_names_the_field(tmp_path: Path, mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads((ROOT / "catalog.json").read_text())
    mutate(raw)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(CatalogInvalid) as err:
        load_catalog(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{nope")
    with pytest.raises(CatalogInvalid, match="not valid JSON"):
        load_catalog(path)


def test_request_checks() -> None:
    cat = load_catalog(ROOT / "catalog.json")
    with pytest.raises(CatalogError):
        cat.check_request(model="gpt-9", tools=[], ttl_seconds=None)
    with pytest.raises(CatalogError):
        cat.check_request(model="echo", tools=["laser"], ttl_seconds=None)
    with pytest.raises(SchemaError):
        cat.check_request(model="echo", tools=[], ttl_seconds=cat.limits.max_ttl_seconds + 1)
