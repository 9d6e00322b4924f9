"""A real Prometheus scrapes a lab (issue 15): configs/prometheus/ as `softudc lab prometheus`
writes it, run in the lab's management namespace. Every target is up, every endpoint passes
`promtool check metrics`, the series say what the lab is (the vnetds peered, the cluster's score
and plans), and killing a host's gatekeeper fires
SoftUDCGatekeeperUnreachable and then SoftUDCHostDown."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from softudc.lab import Lab, shell
from softudc.lab.prometheus import query_api, start_prometheus, targets
from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.metrics

API = "http://127.0.0.1:9090/api/v1"


def query(lab: Lab, expr: str) -> list[dict[str, Any]]:
    from urllib.parse import quote

    result: list[dict[str, Any]] = query_api(lab, f"{API}/query?query={quote(expr)}")["result"]
    return result


def firing(lab: Lab) -> set[str]:
    return {a["labels"]["alertname"] for a in query_api(lab, f"{API}/alerts")["alerts"] if a["state"] == "firing"}


def test_prometheus_scrapes_the_lab_and_fires_the_host_down_alert(make_lab: Callable[..., Lab]) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (Debian package prometheus: make bootstrap)")
    started = time.monotonic()
    lab = make_lab(hosts=2, segments=2, vnetd=True, manager=True)  # a host and a vnetd per segment
    start_prometheus(lab)
    endpoints = [t for groups in targets(lab).values() for g in groups for t in g["targets"]]
    assert len(endpoints) == 5  # the manager, two gatekeepers and two vnetds

    def all_up() -> bool:
        up = {r["metric"]["instance"]: r["value"][1] for r in query(lab, "up")}
        return sorted(up) == sorted(endpoints) and set(up.values()) == {"1"}

    assert wait_until(all_up, timeout=60, interval=1), query(lab, "up")
    for target in endpoints:  # Prometheus's own linter, on what each daemon serves
        text = query_api(lab, f"http://{target}/metrics", raw=True)
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, f"{target}: {check.stdout}{check.stderr}"
    assert wait_until(lambda: [r["value"][1] for r in query(lab, 'softudc:hosts:by_state{state="ready"}')] == ["2"],
                      timeout=30, interval=1), query(lab, "softudc_manager_hosts")
    assert firing(lab) == set()
    # the vnetds peer with each other (each sees the other up), the manager scores the cluster
    assert wait_until(lambda: [r["value"][1] for r in query(lab, "softudc_vnetd_peer_up")] == ["1", "1"],
                      timeout=30, interval=1), query(lab, "softudc_vnetd_peer_up")
    assert {r["metric"]["job"] for r in query(lab, "softudc_vnetd_peer_messages_total")} == {"softudc-vnetd"}
    parts = {r["metric"]["part"] for r in query(lab, "softudc_cluster_score")}
    assert parts == {"total", "spread", "spread_cpu", "spread_memory", "penalty"}, parts
    assert [r["value"][1] for r in query(lab, "sum(softudc_plans)")] == ["0"]
    print(f"\nlab up, 5 targets scraped and checked after {time.monotonic() - started:.0f} s")

    killed = time.monotonic()
    shell.stop_pid(lab.host("h2").pid or 0)
    assert wait_until(lambda: {"SoftUDCGatekeeperUnreachable", "SoftUDCHostDown"} <= firing(lab),
                      timeout=150, interval=2), firing(lab)
    print(f"\nh2's gatekeeper killed: both alerts fire after {time.monotonic() - killed:.0f} s")
    down = query_api(lab, f"{API}/alerts")["alerts"]
    assert any(a["labels"]["alertname"] == "SoftUDCGatekeeperUnreachable"
               and a["labels"]["instance"] == f"{lab.host('h2').mgmt_ip}:9464" for a in down)
    assert {r["metric"]["state"]: r["value"][1] for r in query(lab, "softudc:hosts:by_state")}["down"] == "1"
