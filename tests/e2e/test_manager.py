"""The manager drives a lab: a farm applied from YAML is placed, every host's gatekeeper
converges to its part over mutual TLS, VMs reach each other on their VNETs, scaling changes only
what changed, and deleting the farm leaves nothing on any host."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from softudc.lab import Lab
from softudc.lab.endpoint import add_endpoint, remove_endpoint
from softudc.lab.guest import wait_for_page
from softudc.lab.manager import call
from tests.e2e.conftest import gk, wait_until

pytestmark = [pytest.mark.manager, pytest.mark.vm]
DEMO = (Path(__file__).parents[2] / "configs" / "farms" / "demo.yaml").read_text()


def farm(lab: Lab) -> dict[str, Any]:
    status, body = call(lab, "GET", "/v1/farms/demo")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def running(lab: Lab) -> dict[str, str]:
    return {vm["name"]: h.name for h in lab.hosts for vm in gk(lab, h.name).call("vm.list")
            if vm["state"] == "running"}


def test_apply_scale_and_delete_a_farm(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=3, vms=True, manager=True)
    status, _ = call(lab, "PUT", "/v1/farms/demo", DEMO)
    assert status == 200
    assert wait_until(lambda: farm(lab)["status"]["conditions"]["Ready"], timeout=120), farm(lab)["status"]
    placed = {f"demo--{i['name']}": i["host"] for i in farm(lab)["status"]["instances"]}
    assert running(lab) == placed  # every VM runs on the host its plan names, once
    webs = [h for name, h in placed.items() if "--web-" in name]
    assert len(webs) == 3 and len(set(webs)) == 3  # anti-affinity
    # Over the front VNET, an admin's namespace reaches the web tier on every host.
    front = farm(lab)["status"]["vnet_ids"]["front"]
    add_endpoint(lab, "admin", "h1", front, "10.0.0.200/24")
    ns = lab.endpoints["admin"].netns
    for inst in farm(lab)["status"]["instances"]:
        if inst["vm"] == "web":
            assert wait_for_page(ns, f"http://{inst['addresses']['front']}/index.html", timeout=60) == \
                f"demo--{inst['name']}"
    # Scale 3 -> 2: exactly web-2 goes; the rest stay where they are.
    before = running(lab)
    call(lab, "PUT", "/v1/farms/demo", DEMO.replace("replicas: 3", "replicas: 2"))
    assert wait_until(lambda: "demo--web-2" not in running(lab), timeout=60)
    after = running(lab)
    assert after == {k: v for k, v in before.items() if k != "demo--web-2"}
    # Delete: no domain, no VNET left on any host.
    remove_endpoint(lab, "admin")
    assert call(lab, "DELETE", "/v1/farms/demo")[0] == 200
    assert wait_until(lambda: not any(gk(lab, h.name).call("vm.list") for h in lab.hosts), timeout=60)
    assert wait_until(lambda: not any(gk(lab, h.name).call("vnet.list") for h in lab.hosts), timeout=30)
