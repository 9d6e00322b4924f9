"""The console's pages through FastAPI's TestClient against a Manager on a tmp dir: login with an
API token (refused, cookie flags), what a viewer and an admin see, escaping of hostile text."""

from __future__ import annotations

import re
import time
from pathlib import Path

from fastapi.testclient import TestClient

from softudc.console.sessions import COOKIE
from softudc.manager.api import make_app
from softudc.manager.auth import Principal
from softudc.manager.service import Manager, init

ROOT = Path(__file__).parents[3]
DEMO = (ROOT / "configs" / "farms" / "demo.yaml").read_text()
ADMIN = Principal("admin", "admin")


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.admin = init(tmp, ["127.0.0.1"])
        self.m = Manager(tmp)
        self.viewer = self.m.tokens.create("eve", "viewer", ["demo"])
        self.app = make_app(self.m)

    def client(self, token: str | None = None) -> TestClient:
        c = TestClient(self.app, base_url="https://testserver", follow_redirects=False)
        if token:
            r = c.post("/console/login", data={"token": token})
            assert r.status_code == 303, r.text
        return c


def csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def test_pages_without_a_session_go_to_the_login_page(lab: Lab) -> None:
    c = lab.client()
    r = c.get("/console/")
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert c.get("/console/fragments/hosts").status_code == 401
    assert c.post("/console/apply", data={"name": "x", "descriptor": "x"}).status_code == 401
    assert "API token" in c.get("/console/login").text


def test_login_sets_a_strict_httponly_secure_cookie(lab: Lab) -> None:
    c = lab.client()
    r = c.post("/console/login", data={"token": lab.admin})
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert lab.admin not in cookie  # the browser holds a session id, never the token
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/console"):
        assert flag.lower() in cookie.lower(), cookie
    assert "Hosts" in c.get("/console/").text


def test_a_wrong_token_is_refused(lab: Lab) -> None:
    c = lab.client()
    r = c.post("/console/login", data={"token": "sudc_not-a-token"})
    assert r.status_code == 401 and "refused" in r.text and "set-cookie" not in r.headers
    assert c.get("/console/").status_code == 303


def test_a_removed_token_ends_its_sessions(lab: Lab) -> None:
    c = lab.client(lab.viewer)
    assert c.get("/console/farms").status_code == 200
    lab.m.tokens.path.write_text("{}")  # every token revoked
    assert c.get("/console/farms").status_code == 303


def test_viewer_sees_its_farm_but_no_action(lab: Lab) -> None:
    lab.m.put_farm(ADMIN, "demo", DEMO, None)
    lab.m.put_farm(ADMIN, "other", DEMO.replace("name: demo", "name: other", 1), None)
    v = lab.client(lab.viewer)
    farms = v.get("/console/farms").text
    assert "/console/farms/demo" in farms and "other" not in farms
    page = v.get("/console/farms/demo").text
    assert "Degraded" in page and "web-0" in page and "front" in page and "Applied" in page
    for action in ("Migrate", "Delete farm", "/console/apply"):
        assert action not in page
    assert v.get("/console/farms/other").status_code == 404  # a farm it may not read does not exist
    a = lab.client(lab.admin).get("/console/farms/demo").text
    assert "Delete farm" in a and "/console/apply?farm=demo" in a


def test_hostile_names_are_escaped(lab: Lab) -> None:
    evil = "<script>alert(1)</script>"
    lab.m.put_farm(ADMIN, "demo", DEMO, None)
    lab.m.store.event("farm", "demo", "Applied", evil)
    html = lab.client(lab.admin).get("/console/farms/demo").text
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    r = lab.client().post("/console/login", data={"token": evil})
    assert evil not in r.text


def test_logout_needs_the_csrf_token_and_ends_the_session(lab: Lab) -> None:
    c = lab.client(lab.admin)
    token = csrf(c.get("/console/").text)
    c.post("/console/logout", data={"csrf": "forged"})
    assert c.get("/console/").status_code == 200  # a forged logout does nothing
    c.post("/console/logout", data={"csrf": token})
    assert c.get("/console/").status_code == 303


def test_hosts_page_shows_state_capacity_and_vms(lab: Lab) -> None:
    lab.m.store.put("host", "h1", {"joined": time.time()})
    lab.m.host_status("h1", "h1", {"vcpus": 8, "memory_mib": 8192, "running": [], "sizes": {},
                                   "migration_uri": "qemu+tcp://127.0.0.1/system"})
    html = lab.client(lab.admin).get("/console/fragments/hosts").text
    assert 'data-host="h1"' in html and "/ 8<" in html and "/ 8192<" in html


def test_console_routes_are_named_apart_for_the_metrics(lab: Lab) -> None:
    c = lab.client(lab.admin)
    assert c.get("/console/farms").status_code == 200
    routes = {smp.labels["route"] for metric in lab.m.requests.collect() for smp in metric.samples}
    assert {"console_login", "console_farms_page"} <= routes
    assert not any(r.startswith("console_console_") for r in routes)


def test_hosts_page_shows_live_load_bars_and_their_history(lab: Lab) -> None:
    from tests.unit.console.test_vmpage import load, report

    lab.m.store.put("host", "h1", {"joined": time.time()})
    c = lab.client(lab.admin)
    report(lab, "h1", [], load=load({}, at=time.time() - 20))
    assert "no load yet" not in c.get("/console/fragments/hosts").text
    report(lab, "h1", [], load={**load({}, at=time.time() - 10), "host": {
        "cpu_cores": {"short": 2.0, "long": 1.0}, "memory_mib": {"short": 4096.0, "long": 4096.0}}})
    html = c.get("/console/fragments/hosts").text
    assert 'class="figure">2.00<' in html and 'style="width: 25%"' in html and 'style="width: 50%"' in html
    assert html.count("<polyline") == 2  # two samples seen: a CPU and a memory sparkline


def test_hosts_page_shows_power_to_admins(lab: Lab) -> None:
    lab.m.store.put("host", "h1", {"joined": time.time(), "power": {"driver": "ipmi", "address": "x"}})
    lab.m.store.put("host", "h2", {"joined": time.time(), "state": "standby"})
    for h in ("h1", "h2"):
        lab.m.host_status(h, h, {"vcpus": 8, "memory_mib": 8192, "running": [], "sizes": {},
                                 "migration_uri": "qemu+tcp://127.0.0.1/system"})
    html = lab.client(lab.admin).get("/console/fragments/hosts").text
    assert '<td class="power">on (ipmi)</td>' in html and '<td class="power">off (no driver)</td>' in html
    assert 'class="power"' not in lab.client(lab.viewer).get("/console/fragments/hosts").text
