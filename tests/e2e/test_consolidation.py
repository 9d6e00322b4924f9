"""Consolidation with host power on a real lab (3 hosts with libvirtd, a manager run with
SOFTUDC_CONSOLIDATE=1 and a short band), once with each driver: `lab` (it stops and starts the
host's processes) and `ipmi` (ipmitool against each host's ipmi_sim, whose chassis commands switch
the host's processes): the idle pool parks a host in `standby` (drained, its libvirtd and
gatekeeper stopped); guests burning CPU raise the load over the band, so it is powered on and
reports again; a new guest then runs on it (anti-affinity leaves no other place)."""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from softudc.lab import Lab, shell
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import http_get
from softudc.lab.manager import call
from tests.e2e.conftest import wait_until
from tests.e2e.test_drain import FARM, get, instances, running, three_hosts

pytestmark = [pytest.mark.balance, pytest.mark.vm]
# low 2 %, high 10 % (of the ready hosts' 4 cores each), low held 10 s, high held 5 s, quiet 60 s
# (no second action while the test goes on), at least 2 ready hosts
BAND = "0.02,0.1,10,5,60,2"


@pytest.fixture(scope="module", params=["lab", "ipmi"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    before = {k: os.environ.get(k) for k in ("SOFTUDC_CONSOLIDATE", "SOFTUDC_CONSOLIDATE_BAND")}
    os.environ.update({"SOFTUDC_CONSOLIDATE": "1", "SOFTUDC_CONSOLIDATE_BAND": BAND})  # the lab's manager's
    try:
        if shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None:
            pytest.fail("ipmi_sim or ipmitool is missing: run `make bootstrap` (packages openipmi, ipmitool)")
        yield from three_hosts(request, "dp", power=request.param)
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def states(lab: Lab) -> dict[str, str]:
    return {h["name"]: h["state"] for h in get(lab, "/v1/hosts")}


def events(lab: Lab, host: str) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = get(lab, f"/v1/events?kind=host&name={host}")
    return body


def test_an_idle_host_is_parked_and_load_wakes_it_and_uses_it(lab: Lab) -> None:
    t = time.monotonic()
    assert wait_until(lambda: "standby" in states(lab).values(), timeout=90, interval=1), states(lab)
    parked = next(h for h, s in states(lab).items() if s == "standby")
    parked_s = time.monotonic() - t
    assert shell.netns_pids(lab.host(parked).netns) == []  # its libvirtd and gatekeeper stopped
    assert any(e["type"] == "Consolidation" and e["message"].startswith("standby: ") for e in events(lab, parked))
    driver = "ipmi 10.99.0.1" if lab.spec.power == "ipmi" else f"lab {lab.spec.name}/{parked}"
    assert any("consolidation: " in e["message"] and driver in e["message"] for e in events(lab, parked)), \
        events(lab, parked)[-5:]

    assert call(lab, "PUT", "/v1/farms/dr", FARM)[0] == 200
    assert wait_until(lambda: get(lab, "/v1/farms/dr")["status"]["conditions"]["Ready"], timeout=120, interval=1)
    placed = {n: i["host"] for n, i in instances(lab).items()}
    assert parked not in placed.values()
    add_endpoint(lab, "adm", placed["a-0"], get(lab, "/v1/farms/dr")["status"]["vnet_ids"]["net"], "10.8.0.200/24")
    for n, i in instances(lab).items():  # from the endpoint on the VNET
        url = f"http://{i['addresses']['net']}/cgi-bin/burn?150"
        assert wait_until(functools.partial(burning, lab.endpoints["adm"].netns, url), timeout=90, interval=1), \
            f"{n} did not burn"
    t = time.monotonic()
    assert wait_until(lambda: states(lab)[parked] == "ready", timeout=150, interval=1), (
        states(lab), events(lab, parked)[-5:])
    woke_s = time.monotonic() - t
    assert any(e["type"] == "Consolidation" and e["message"].startswith("wake: ") for e in events(lab, parked))

    farm = FARM.replace("replicas: 2", "replicas: 3")
    assert call(lab, "PUT", "/v1/farms/dr", farm)[0] == 200
    assert wait_until(lambda: "dr--a-2" in running(lab), timeout=120, interval=1), running(lab)
    assert running(lab)["dr--a-2"] == [parked]  # used: the only host anti-affinity leaves
    print(f"\nmeasured: parked {parked} {parked_s:.0f} s after the lab was up; woken {woke_s:.0f} s after the "
          "guests started burning")


def burning(netns: str, url: str) -> bool:
    return "burning" in http_get(netns, url)
