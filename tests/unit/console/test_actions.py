"""Console actions: apply with problems shown at their lines, then fixed; delete with
confirmation; migrate through the Manager; forged and viewer posts refused, nothing changed."""

from __future__ import annotations

import time
from pathlib import Path

from tests.unit.console.test_views import ADMIN, DEMO, Lab, csrf


def test_apply_shows_each_problem_at_its_line_then_applies_the_fix(lab: Lab) -> None:
    c = lab.client(lab.admin)
    token = csrf(c.get("/console/apply").text)
    bad = DEMO.replace("replicas: 3", "replicas: many", 1)
    r = c.post("/console/apply", data={"csrf": token, "name": "demo", "descriptor": bad})
    assert r.status_code == 400
    assert '<li value="21" id="line-21" class="bad">' in r.text
    assert "farms/demo:21:17: spec.vms[0].replicas" in r.text
    assert "replicas: many" in r.text  # the text is kept in the editor
    assert lab.m.store.get("farm", "demo") is None
    r = c.post("/console/apply", data={"csrf": token, "name": "demo", "descriptor": DEMO})
    assert r.status_code == 303 and r.headers["location"] == "/console/farms/demo"
    assert lab.m.store.get("farm", "demo") is not None
    assert "replicas: 3" in c.get("/console/apply?farm=demo").text  # editing starts from the stored text


def test_forged_and_viewer_posts_are_refused_and_change_nothing(lab: Lab) -> None:
    lab.m.put_farm(ADMIN, "demo", DEMO, None)
    admin = lab.client(lab.admin)
    assert admin.post("/console/farms/demo/delete", data={"confirm": "demo"}).status_code == 403
    assert admin.post("/console/farms/demo/delete", data={"confirm": "demo", "csrf": "x"}).status_code == 403
    viewer = lab.client(lab.viewer)
    token = csrf(viewer.get("/console/farms/demo").text)  # its logout form's token
    for path, data in (("/console/farms/demo/delete", {"confirm": "demo"}),
                       ("/console/farms/demo/instances/web-0/migrate", {"host": "h1"}),
                       ("/console/apply", {"name": "demo", "descriptor": DEMO})):
        assert viewer.post(path, data={**data, "csrf": token}).status_code == 403
    assert lab.m.store.get("farm", "demo") is not None


def test_delete_needs_the_confirmation_naming_the_farm(lab: Lab) -> None:
    lab.m.put_farm(ADMIN, "demo", DEMO, None)
    c = lab.client(lab.admin)
    token = csrf(c.get("/console/farms/demo").text)
    r = c.post("/console/farms/demo/delete", data={"csrf": token, "confirm": "other"})
    assert r.status_code == 400 and "tick the box" in r.text
    assert lab.m.store.get("farm", "demo") is not None
    r = c.post("/console/farms/demo/delete", data={"csrf": token, "confirm": "demo"})
    assert r.status_code == 303
    assert lab.m.store.get("farm", "demo") is None or lab.m.store.get("farm", "demo").deleted  # type: ignore[union-attr]


def test_migrate_goes_through_the_manager_and_shows_why_not(lab: Lab) -> None:
    lab.m.put_farm(ADMIN, "demo", DEMO, None)
    c = lab.client(lab.admin)
    token = csrf(c.get("/console/farms/demo").text)
    r = c.post("/console/farms/demo/instances/web-0/migrate", data={"csrf": token, "host": "nowhere"})
    assert r.status_code == 404 and "farm demo has no instance &#39;web-0&#39;" in r.text  # not placed yet


def test_migrate_from_the_farm_page_starts_the_move(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from softudc.manager.api import make_app
    from tests.unit.manager.test_controller_one_vm import HOSTS, instances, one_vm_manager, placed

    m = one_vm_manager(tmp_path)
    try:
        where = placed(m)
        dst = next(h for h in HOSTS if h != where["db-0"])
        c = TestClient(make_app(m), base_url="https://testserver", follow_redirects=False)
        assert c.post("/console/login", data={"token": m.tokens.create("root", "admin")}).status_code == 303
        page = c.get("/console/farms/demo").text
        assert f'<option value="{dst}"></option>' in page  # the hosts to choose from
        r = c.post("/console/farms/demo/instances/db-0/migrate", data={"csrf": csrf(page), "host": dst})
        assert r.status_code == 303 and r.headers["location"] == "/console/farms/demo"
        assert instances(m)["db-0"]["migrating"]["to"] == dst
    finally:
        m.close()


def test_drain_and_undrain_from_the_hosts_page(lab: Lab) -> None:
    from tests.unit.console.test_vmpage import placed, report

    where = placed(lab)
    lab.m.store.put("host", "h4", {"joined": time.time()})
    report(lab, "h4", [])  # room for h1's web replica (one per host)
    c = lab.client(lab.admin)
    page = c.get("/console/").text
    assert 'action="/console/hosts/h1/drain"' in page
    r = c.post("/console/hosts/h1/drain", data={"csrf": csrf(page)})
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    host = lab.m.store.get("host", "h1")
    assert host is not None and host.spec["state"] in ("draining", "maintenance")
    page = c.get("/console/fragments/hosts").text
    on_h1 = sum(1 for h in where.values() if h == "h1")
    assert 'data-drain="h1"' in page and f"/ {on_h1} moved" in page
    assert 'action="/console/hosts/h1/undrain"' in page
    r = c.post("/console/hosts/h1/undrain", data={"csrf": csrf(page)})
    assert r.status_code == 303
    host = lab.m.store.get("host", "h1")
    assert host is not None and host.spec["state"] == "ready"


def test_a_drain_that_cannot_be_done_is_refused_whole(lab: Lab) -> None:
    from tests.unit.console.test_vmpage import placed

    placed(lab)  # web's anti-affinity: 3 replicas on 3 hosts, no room to drain any host holding one
    c = lab.client(lab.admin)
    token = csrf(c.get("/console/").text)
    holder = next(i["host"] for i in lab.m.get_farm(ADMIN, "demo")["status"]["instances"] if i["vm"] == "web")
    r = c.post(f"/console/hosts/{holder}/drain", data={"csrf": token})
    assert r.status_code == 409 and "cannot be drained" in r.text and "nothing was changed" in r.text
    host = lab.m.store.get("host", holder)
    assert host is not None and host.spec.get("state", "ready") == "ready"


def test_drain_refused_to_viewers_and_forgers(lab: Lab) -> None:
    from tests.unit.console.test_vmpage import placed

    placed(lab)
    viewer = lab.client(lab.viewer)
    page = viewer.get("/console/").text
    assert "/drain" not in page and "Undrain" not in page
    assert viewer.post("/console/hosts/h1/drain", data={"csrf": csrf(page)}).status_code == 403
    assert lab.client(lab.admin).post("/console/hosts/h1/drain", data={"csrf": "forged"}).status_code == 403
    host = lab.m.store.get("host", "h1")
    assert host is not None and host.spec.get("state", "ready") == "ready"
