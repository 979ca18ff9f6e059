"""deploy/grafana/agentfactory.json: every PromQL expression parses (promtool check rules on a rules
file generated from the dashboard) and names only series the control plane (or Prometheus) exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentfactory.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "agentfactory.json"
# Grafana's variables, as Prometheus would see them once Grafana has substituted them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": ".*", "$instance": ".*"}
METRIC = re.compile(r"\b((?:agentfactory|process|python)_[a-z_]+|up)\b(?!\s*\()")
FROM_PROMETHEUS = {"up"}


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(doc: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(doc) for t in p.get("targets", []) if t.get("expr")]


def substituted(expr: str) -> str:
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable this check does not know: {expr}"
    return expr


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: run `make setup` (AGENTFACTORY_WITH_TEST_TOOLS=1 installs it)")
    return path


def test_every_expression_passes_promtool(tmp_path: Path) -> None:
    exprs = expressions(json.loads(DASHBOARD.read_text()))
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": substituted(e)} for i, e in enumerate(exprs)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules, indent=2))  # JSON is YAML
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


def test_every_series_named_is_exported() -> None:
    doc = json.loads(DASHBOARD.read_text())
    metrics = Metrics()
    metrics.prepare_models(["echo"])
    exposition = metrics.render().decode()
    exported: set[str] = set()
    for line in exposition.splitlines():  # `# TYPE name kind`: a family, with or without samples yet
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            exported |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    queries = expressions(doc) + [v["definition"] for v in doc["templating"]["list"] if v.get("definition")]
    named = {m for q in queries for m in METRIC.findall(q)} - FROM_PROMETHEUS
    assert named, "no metric found in the dashboard"
    assert named <= exported, f"not exported by the control plane: {sorted(named - exported)}"
    assert "agentfactory_build_info" in named and any(m.startswith("process_") for m in named)


def test_panels_are_well_formed() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids))
    for panel in panels(doc):
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
