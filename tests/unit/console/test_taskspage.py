"""The tasks page: migrations under way with their progress, drains and rollouts (admin only)."""

from __future__ import annotations

import time

from softudc.console import stream
from softudc.manager import rollout
from tests.unit.console.test_views import ADMIN, Lab, csrf
from tests.unit.console.test_vmpage import HOSTS, placed, report


def test_a_migration_a_drain_and_a_rollout_are_listed(lab: Lab) -> None:
    where = placed(lab)
    c = lab.client(lab.admin)
    assert "No VM is moving." in c.get("/console/tasks").text
    to = next(h for h in HOSTS if h != where["db-0"])
    lab.m.migrate(ADMIN, "demo", "db-0", {"to": to})
    attempt = lab.m.get_farm(ADMIN, "demo")["status"]["instances"]
    job = next(i for i in attempt if i["name"] == "db-0")["migrating"]["attempt"]
    report(lab, where["db-0"], ["demo--db-0"], migrations={"demo--db-0": {
        "attempt": job, "to": to, "state": "copying", "started": time.time(), "data_total": 400,
        "data_processed": 300}})
    lab.m.store.put("host", "h4", {"joined": time.time()})
    report(lab, "h4", [])
    rev = lab.m.store.revision()
    spec = rollout.new_spec("r1", ADMIN, ["h4"], "#!/bin/sh\n", "up.sh", 1, {}, time.time())
    spec["progress"]["h4"] = {"phase": "failed", "since": time.time(), "reason": "script: exit 3"}
    lab.m.store.put(rollout.KIND, "r1", {**spec, "state": "failed", "reason": "h4 failed"})
    assert "tasks" in stream.changed(lab.m, lab.m.tokens.authenticate(f"Bearer {lab.admin}"), rev)[1]
    html = c.get("/console/fragments/tasks").text
    assert 'data-move="demo/db-0"' in html and f"<td>{where['db-0']}</td><td>{to}</td>" in html
    assert '<progress max="100" value="75">' in html and 'class="busy"' in html
    assert 'data-rollout-host="h4"' in html and "script: exit 3" in html and "r1: failed" in html
    r = c.post("/console/hosts/h4/drain", data={"csrf": csrf(c.get("/console/").text)})  # empty: maintenance
    assert r.status_code == 303


def test_a_viewer_sees_its_moves_only_and_no_drain_or_rollout(lab: Lab) -> None:
    where = placed(lab)
    lab.m.migrate(ADMIN, "demo", "db-0", {"to": next(h for h in HOSTS if h != where["db-0"])})
    html = lab.client(lab.viewer).get("/console/tasks").text
    assert 'data-move="demo/db-0"' in html and "Drains" not in html and "Rolling maintenance" not in html
