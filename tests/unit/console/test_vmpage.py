"""The VM page: host, state, image, NICs, load, events; migrating from it (admin, CSRF) and the
move's progress as the source reports it; a viewer sees no migrate form."""

from __future__ import annotations

import re
import time
from typing import Any

from softudc.model.hoststate import nic_mac
from tests.unit.console.test_views import ADMIN, DEMO, Lab, csrf

HOSTS = ("h1", "h2", "h3")


def load(vms: dict[str, float], at: float | None = None) -> dict[str, Any]:
    def fig(c: float) -> dict[str, Any]:
        return {"cpu_cores": {"short": c, "long": c}, "memory_mib": {"short": 100 * c, "long": 100 * c}}
    return {"at": at or time.time(), "samples": 6, "host": fig(sum(vms.values())),
            "vms": {v: fig(c) for v, c in vms.items()}}


def report(lab: Lab, host: str, running: list[str], **extra: Any) -> None:
    lab.m.host_status(host, host, {"vcpus": 8, "memory_mib": 8192, "running": running,
                                   "sizes": {v: [1, 128] for v in running}, "underlay": f"192.0.2.{host[1:]}",
                                   "migration_uri": "qemu+tcp://127.0.0.1/system", **extra})
    lab.m.note_address(host, "127.0.0.1")


def placed(lab: Lab) -> dict[str, str]:
    """The demo farm on h1..h3, each host running what it was given (and reporting its load)."""
    for h in HOSTS:
        lab.m.store.put("host", h, {"joined": time.time()})
        report(lab, h, [])
    lab.m.settle()
    lab.m.put_farm(ADMIN, "demo", DEMO, None)
    lab.m.settle()
    obj = lab.m.store.get("farm", "demo")
    assert obj is not None
    where = {i["name"]: i["host"] for i in obj.status["instances"]}
    for h in HOSTS:
        mine = [f"demo--{n}" for n, at in where.items() if at == h]
        report(lab, h, mine, load=load({v: 0.5 for v in mine}))
    lab.m.settle()
    return where


def test_vm_page_shows_host_image_nics_use_and_events(lab: Lab) -> None:
    where = placed(lab)
    html = lab.client(lab.admin).get("/console/farms/demo/vms/db-0").text
    assert f'<span data-field="host">{where["db-0"]}</span>' in html
    assert 'data-field="image">test-guest<' in html and "db: 1 vCPU, 128 MiB" in html
    assert "10.0.0.20" in html and nic_mac("demo", "db-0", "back") in html and "/console/farms/demo/vnets/back" in html
    assert re.search(r'class="figure">0\.50<', html)  # its load, from its host's report
    assert 'id="migrate"' in html and "<option" in html
    assert where["db-0"] not in re.findall(r'<option value="([^"]+)"', html)  # not to where it is


def test_events_are_this_vms_only(lab: Lab) -> None:
    placed(lab)
    lab.m.store.event("farm", "demo", "Note", "web-1 restarted")
    lab.m.store.event("farm", "demo", "Note", "web-10 restarted")
    html = lab.client(lab.admin).get("/console/fragments/farms/demo/vms/web-1").text
    assert "web-1 restarted" in html and "web-10 restarted" not in html


def test_migrate_from_the_vm_page_shows_the_move_and_its_progress(lab: Lab) -> None:
    where = placed(lab)
    c = lab.client(lab.admin)
    page = c.get("/console/farms/demo/vms/db-0").text
    to = next(h for h in HOSTS if h != where["db-0"])
    r = c.post("/console/farms/demo/instances/db-0/migrate",
               data={"csrf": csrf(page), "host": to, "back": "/console/farms/demo/vms/db-0"})
    assert r.status_code == 303 and r.headers["location"] == "/console/farms/demo/vms/db-0"
    frag = c.get("/console/fragments/farms/demo/vms/db-0").text
    assert f"Moving to {to} (live)" in frag and 'class="move"' in frag
    obj = lab.m.store.get("farm", "demo")
    assert obj is not None
    attempt = next(i for i in obj.status["instances"] if i["name"] == "db-0")["migrating"]["attempt"]
    report(lab, where["db-0"], ["demo--db-0"], migrations={"demo--db-0": {
        "attempt": attempt, "to": to, "state": "copying", "started": time.time(),
        "data_total": 200 * 2**20, "data_processed": 50 * 2**20}})
    frag = c.get("/console/fragments/farms/demo/vms/db-0").text
    assert '<progress max="100" value="25">' in frag and "50.0 of 200.0 MiB" in frag
    farm = c.get("/console/fragments/farms/demo").text  # the topology draws it moving
    assert re.search(r'class="vm moving" data-vm="db-0"', farm) and f"→ {to}" in farm


def test_a_viewer_sees_no_migrate_form_and_other_farms_do_not_exist(lab: Lab) -> None:
    placed(lab)
    html = lab.client(lab.viewer).get("/console/farms/demo/vms/web-0").text
    assert "web-0" in html and 'id="migrate"' not in html and "csrf" in html  # (its logout form's)
    assert lab.client(lab.viewer).get("/console/farms/other/vms/web-0").status_code == 404
    assert lab.client(lab.admin).get("/console/farms/demo/vms/web-9").status_code == 404


def test_the_farm_page_draws_the_topology(lab: Lab) -> None:
    where = placed(lab)
    html = lab.client(lab.admin).get("/console/farms/demo").text
    for inst, host in where.items():
        assert f'data-vm="{inst}" data-host="{host}"' in html
    assert 'data-vnet="front"' in html and 'data-vnet="back"' in html


def test_progress_from_the_record_when_the_report_has_none(lab: Lab) -> None:
    where = placed(lab)
    to = next(h for h in HOSTS if h != where["db-0"])
    # The record is written by hand below: no controllers' pass may run meanwhile (one that read the
    # status before that write would write its older view over it; seen in a full unit run).
    assert lab.m.settle()
    lab.m.controllers.stop()
    lab.m.migrate(ADMIN, "demo", "db-0", {"to": to})
    obj = lab.m.store.get("farm", "demo")
    assert obj is not None
    insts = obj.status["instances"]
    moving = next(i for i in insts if i["name"] == "db-0")["migrating"]
    moving.update({"data_total": 1000, "data_processed": 100})
    lab.m.store.set_status("farm", "demo", {**obj.status, "instances": insts})
    assert '<progress max="100" value="10">' in lab.client(lab.admin).get("/console/fragments/farms/demo/vms/db-0").text
