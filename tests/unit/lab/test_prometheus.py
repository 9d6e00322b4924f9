"""configs/prometheus/ as the lab writes it: promtool accepts the configuration and its rules, the
rules' unit tests pass, every alert says what is wrong and what to do and has a test, and every
metric the rules read is one the code exports (a renamed metric must not silence an alert)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from softudc.lab.prometheus import CONFIG_DIR, JOBS, write_config
from softudc.lab.state import Host, Lab, LabSpec, ManagerProc, VnetdInfo

ROOT = Path(__file__).resolve().parents[3]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool not installed (Debian package prometheus: make bootstrap)")


def lab(tmp_path: Path, ha: bool = False) -> Lab:
    lb = Lab(LabSpec("p", hosts=2), str(tmp_path))
    lb.hosts = [Host(f"h{i}", f"ns{i}", 1, f"10.0.0.{i}", f"10.99.0.{10 + i}", "s", "c", "l") for i in (1, 2)]
    if ha:
        lb.managers = [ManagerProc("m1", "10.99.0.1", 1), ManagerProc("m2", "10.99.0.2", 2)]
    else:
        lb.manager_pid = 1
    return lb


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load((CONFIG_DIR / "rules" / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_the_lab_writes_its_targets_for_every_job(tmp_path: Path) -> None:
    config = write_config(lab(tmp_path, ha=True), tmp_path / "prom")
    groups = {job: json.loads((config.parent / "targets" / f"{job}.json").read_text()) for job in JOBS}
    assert groups["manager"] == [{"targets": ["10.99.0.1:9465", "10.99.0.2:9465"], "labels": {"lab": "p"}}]
    assert [g["labels"]["host"] for g in groups["gatekeeper"]] == ["h1", "h2"]
    assert groups["gatekeeper"][0]["targets"] == ["10.99.0.11:9464"]
    assert groups["vnetd"] == []
    one_lab = lab(tmp_path)
    one_lab.vnetds = [VnetdInfo(k, f"vd{k}", f"10.100.{k}.250", "s", "c", "l") for k in (0, 1)]
    one = write_config(one_lab, tmp_path / "one")
    assert json.loads((one.parent / "targets" / "manager.json").read_text())[0]["targets"] == ["10.99.0.1:9465"]
    assert json.loads((one.parent / "targets" / "vnetd.json").read_text()) == [
        {"targets": [f"10.99.0.{240 + k}:9465"], "labels": {"lab": "p", "segment": str(k)}} for k in (0, 1)]


@needs_promtool
def test_promtool_accepts_the_written_configuration_and_its_rules(tmp_path: Path) -> None:
    config = write_config(lab(tmp_path), tmp_path / "prom")
    out = subprocess.run([str(PROMTOOL), "check", "config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


@needs_promtool
def test_the_alerting_rules_unit_tests_pass() -> None:
    out = subprocess.run([str(PROMTOOL), "test", "rules", str(CONFIG_DIR / "tests" / "alerts_test.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_severity_a_summary_a_runbook_and_a_test() -> None:
    tested = set(re.findall(r"alertname: (\w+)", (CONFIG_DIR / "tests" / "alerts_test.yml").read_text()))
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "runbook"} <= set(rule["annotations"]), name
        assert name in tested, f"{name}: no promtool test fires it"


def test_every_metric_the_rules_read_is_exported_by_the_code() -> None:
    code = "\n".join(p.read_text() for d in ("softudc", "gatekeeper", "vnetd") for p in (ROOT / d).rglob("*.py"))
    rules = "\n".join(p.read_text() for p in (CONFIG_DIR / "rules").glob("*.yml"))
    used = set(re.findall(r"\b(softudc_[a-z_]+)", rules))
    assert used, "no softudc_ metric in the rules?"
    for metric in sorted(used):
        base = re.sub(r"_(total|bucket|count|sum)$", "", metric)  # the series of a counter or histogram
        assert f'"{base}"' in code, f"{metric}: read by configs/prometheus/rules but exported nowhere"
