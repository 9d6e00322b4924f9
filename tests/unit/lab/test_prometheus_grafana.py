"""configs/grafana/softudc.json, the Grafana dashboard over the metrics configs/prometheus/ scrapes
(softudc/lab/prometheus.py writes that configuration): valid JSON of a dashboard, panels laid out
on the 24-column grid, every query through the dashboard's Prometheus data source, every metric a
query reads exported by the code and every recorded series one the recording rules make, and
(with promtool) every query valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "configs" / "grafana" / "softudc.json"
RULES = ROOT / "configs" / "prometheus" / "rules"
PROMTOOL = shutil.which("promtool")


def dashboard() -> dict[str, Any]:
    d: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return d


def queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] if p["type"] != "row" for t in p["targets"]]


def test_a_dashboard_with_unique_ids_on_the_grid() -> None:
    d = dashboard()
    assert d["uid"] == "softudc" and d["title"] == "SoftUDC" and d["schemaVersion"] >= 30
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
    names = {v["name"] for v in d["templating"]["list"]}
    for title, expr in queries():
        assert set(re.findall(r"\$(\w+)", expr)) <= names, f"{title}: a variable the dashboard does not define"


def test_every_metric_is_exported_and_every_recorded_series_recorded() -> None:
    code = "\n".join(p.read_text() for d in ("softudc", "gatekeeper", "vnetd") for p in (ROOT / d).rglob("*.py"))
    recorded = {r["record"] for f in RULES.glob("*.yml") for g in yaml.safe_load(f.read_text())["groups"]
                for r in g["rules"] if "record" in r}
    assert recorded, "no recording rules?"
    seen = set()
    for title, expr in queries():
        for metric in re.findall(r"\b(softudc_[a-z_]+)", expr):
            base = re.sub(r"_(total|bucket|count|sum)$", "", metric)
            assert f'"{base}"' in code, f"{title}: {metric} is exported nowhere"
            seen.add(base)
        for series in re.findall(r"\b(softudc:[a-z0-9_:]+)", expr):
            assert series in recorded, f"{title}: {series} is recorded by no rule in {RULES}"
            seen.add(series)
    assert len(seen) >= 20  # the dashboard covers the metrics, not a handful


def test_a_misspelt_metric_would_be_caught() -> None:
    code = "\n".join(p.read_text() for p in (ROOT / "softudc").rglob("*.py"))
    assert '"softudc_host_cpu_cores"' in code and '"softudc_host_cpu_core"' not in code


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus: make bootstrap)")
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = [{"record": f"check:query_{n}", "expr": expr.replace("$host", ".*")}
             for n, (_, expr) in enumerate(queries())]
    f = tmp_path / "queries.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([str(PROMTOOL), "check", "rules", str(f)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
