"""Rebalance plans on a real lab (3 hosts with libvirtd, a manager, three tiny guests all put on one
host by taking the other two out of placement first, then putting them back): the guests burn CPU
(/cgi-bin/burn), the dry-run plan moves some away (each move with a reason, score before > after),
running it migrates exactly those moves with at most one move per source at a time (asserted from
the plan's event log), the score of the cluster drops, and a new plan moves none of the moved VMs
again (cooldown). A plan computed before the cluster changed is refused, naming what changed."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from softudc.lab import Lab
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import http_get
from softudc.lab.manager import call
from tests.e2e.conftest import wait_until
from tests.e2e.test_drain import get, three_hosts

pytestmark = [pytest.mark.balance, pytest.mark.vm]
FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: bl}
spec:
  vnets: [{name: net, subnet: 10.9.0.0/24}]
  vms:
    - {name: b, replicas: 3, memory: 128Mi, image: test-guest,
       migration: {policy: live, maxDowntimeMs: 100}, nics: [{vnet: net, address: pool}]}
"""


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    yield from three_hosts(request, "bl")


def post(lab: Lab, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return call(lab, "POST", path, json.dumps(body))


def placed(lab: Lab) -> dict[str, str]:
    return {i["name"]: i["host"] for i in get(lab, "/v1/farms/bl")["status"]["instances"]}


def set_state(lab: Lab, host: str, state: str) -> None:
    status, body = call(lab, "PUT", f"/v1/hosts/{host}/state", json.dumps({"state": state}))
    assert status == 200, body


def booted(console: Path) -> bool:
    return console.exists() and "GUEST_READY" in console.read_text(errors="replace")


def burning(netns: str, url: str) -> bool:
    return "burning" in http_get(netns, url)


def test_a_plan_previewed_then_run_moves_exactly_its_moves(lab: Lab) -> None:
    t0 = time.monotonic()
    first, others = lab.hosts[0].name, [h.name for h in lab.hosts[1:]]
    for h in others:
        set_state(lab, h, "maintenance")
    assert call(lab, "PUT", "/v1/farms/bl", FARM)[0] == 200
    assert wait_until(lambda: get(lab, "/v1/farms/bl")["status"]["conditions"]["Ready"], timeout=120, interval=1)
    assert set(placed(lab).values()) == {first}
    for h in others:
        set_state(lab, h, "ready")
    for n in placed(lab):  # migrate booted guests only
        console = lab.dir / first / "consoles" / f"bl--{n}.log"
        assert wait_until(functools.partial(booted, console), timeout=120, interval=1), f"{n} did not boot"
    add_endpoint(lab, "bla", first, get(lab, "/v1/farms/bl")["status"]["vnet_ids"]["net"], "10.9.0.200/24")
    ns = lab.endpoints["bla"].netns
    for i in get(lab, "/v1/farms/bl")["status"]["instances"]:
        url = f"http://{i['addresses']['net']}/cgi-bin/burn?120"
        assert wait_until(functools.partial(burning, ns, url), timeout=60, interval=1), f"{i['name']} did not burn"
    assert wait_until(lambda: any(r["host"] == first and r.get("cpu_cores", {}).get("short", 0) > 0.05
                                  for r in get(lab, "/v1/load/hosts")), timeout=60, interval=1), \
        get(lab, "/v1/load/hosts")

    # A dry run: stored, nothing moves; every move has its reason.
    before = placed(lab)
    status, plan = post(lab, "/v1/plans", {"kind": "rebalance", "dry_run": True, "max_per_source": 1})
    assert status == 200 and plan["moves"] and plan["score_after"] < plan["score_before"], plan
    assert all(m["source"] == first and m["destination"] in others and m["reason"] for m in plan["moves"])
    assert placed(lab) == before

    # Run exactly that plan.
    status, ran = post(lab, f"/v1/plans/{plan['id']}/run", {})
    assert status == 200 and ran["state"] in ("running", "done"), \
        (ran.get("reason"), ran.get("moves"), get(lab, f"/v1/plans/{plan['id']}/events")[-6:])
    assert wait_until(lambda: get(lab, f"/v1/plans/{plan['id']}")["state"] != "running", timeout=120, interval=1)
    done = get(lab, f"/v1/plans/{plan['id']}")
    assert done["state"] == "done", (done, get(lab, "/v1/farms/bl")["events"][-5:])
    after = placed(lab)
    moved = {m["vm"].split("/", 1)[1]: m["destination"] for m in plan["moves"]}
    assert {n: h for n, h in after.items() if h != before[n]} == moved  # exactly the plan's moves

    # Limits from the event log: a source's next move starts only after its previous one is done.
    log = get(lab, f"/v1/plans/{plan['id']}/events")
    under_way = 0
    for e in log:
        under_way += {"Move": 1, "MoveDone": -1}.get(e["type"], 0)
        assert under_way <= 1, log  # max_per_source 1, and every move leaves the one source
    assert [e["type"] for e in log].count("Move") == len(moved) and log[-1]["type"] == "Done"

    # The score dropped; a new plan leaves the moved VMs alone (cooldown).
    status, again = post(lab, "/v1/plans", {"dry_run": True})
    assert status == 200 and again["score_before"] < plan["score_before"], (again, plan)
    assert not {m["vm"] for m in again["moves"]} & {m["vm"] for m in plan["moves"]}, again

    # A plan computed before a change is refused, naming it.
    status, stale = post(lab, "/v1/plans", {"dry_run": True, "cooldown_s": 0})
    assert status == 200
    set_state(lab, others[0], "maintenance")
    status, body = post(lab, f"/v1/plans/{stale['id']}/run", {})
    assert status == 409 and f"host {others[0]}: ready -> maintenance" in str(body), body
    set_state(lab, others[0], "ready")
    print(f"\nmeasured: {len(moved)} move(s), score {plan['score_before']:.4f} -> {again['score_before']:.4f} "
          f"(planned {plan['score_after']:.4f}); test {time.monotonic() - t0:.0f} s")
