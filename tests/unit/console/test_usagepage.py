"""The usage page: each readable farm's VMs with CPU-seconds, memory GiB-hours and bytes per VNET
(named), the farm's total; a viewer sees its farms only, another farm is refused."""

from __future__ import annotations

import time

from softudc.manager import usage
from tests.unit.console.test_views import Lab
from tests.unit.console.test_vmpage import placed


def book(lab: Lab, vnet_id: int) -> None:
    now = time.time()
    lab.m.store.put(usage.KIND, "h1", {"totals": {
        "demo--web-0": {"cpu_s": 60.25, "mem_gib_h": 0.125, "net": {str(vnet_id): [2048, 1024]}, "last": now},
        "demo--db-0": {"cpu_s": 1.0, "mem_gib_h": 0.5, "net": {}, "last": now},
        "other--web-0": {"cpu_s": 9.0, "mem_gib_h": 0.0, "net": {}, "last": now}}})


def test_usage_per_vm_and_farm(lab: Lab) -> None:
    placed(lab)
    obj = lab.m.store.get("farm", "demo")
    assert obj is not None
    book(lab, obj.status["vnet_ids"]["front"])
    html = lab.client(lab.admin).get("/console/usage").text
    assert 'data-usage-vm="demo--web-0"' in html and "60.2" in html and "front: 2.0 KiB / 1.0 KiB" in html
    assert 'data-usage-farm="other"' in html  # an admin sees every farm's
    assert ">61.2<" in html  # demo's total CPU-seconds
    v = lab.client(lab.viewer)
    mine = v.get("/console/fragments/usage").text
    assert 'data-usage-farm="demo"' in mine and "other" not in mine
    assert "403" in v.get("/console/fragments/usage?farm=other").text
    assert 'data-usage-farm="demo"' in v.get("/console/usage?farm=demo&hours=bogus").text  # all time


def test_the_vm_page_shows_what_it_used(lab: Lab) -> None:
    placed(lab)
    book(lab, 1)
    html = lab.client(lab.admin).get("/console/fragments/farms/demo/vms/web-0").text
    assert 'data-usage="demo--web-0"' in html and "60.2 CPU-seconds" in html and "0.1250 memory GiB-hours" in html
