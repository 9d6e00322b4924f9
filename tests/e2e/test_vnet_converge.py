"""R21 and R18 on real gatekeepers driven by the manager: a VNET a host already has follows the
descriptor when its security level or MTU changes (made again, its ports plugged back in), and
every VNET carries keys (signed VARP) and the member hosts' underlay addresses.

The hosts have no hypervisor: converge makes the VNETs for the VMs placed there (starting the VMs
fails and is reported), and lab endpoints stand in for the VMs' NICs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from softudc.lab import Lab
from softudc.lab.endpoint import add_endpoint
from softudc.lab.manager import call
from tests.e2e.conftest import gk, ping, wait_until

pytestmark = [pytest.mark.manager, pytest.mark.esp]

FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata:
  name: conv
spec:
  vnets:
    - name: net
      subnet: 10.5.0.0/24{extra}
  placementGroups:
    - name: spread
      policy: anti-affinity
  vms:
    - name: a
      replicas: 2
      memory: 128Mi
      image: test-guest
      placementGroup: spread
      nics:
        - {{vnet: net, address: pool}}
"""


def apply(lab: Lab, extra: str = "") -> None:
    status, body = call(lab, "PUT", "/v1/farms/conv", FARM.format(extra=extra))
    assert status == 200, body


def vnet_on(lab: Lab, host: str, vid: int) -> dict[str, Any] | None:
    return next((v for v in gk(lab, host).call("vnet.list") if v["vnet"] == vid), None)


def datapath(lab: Lab, host: str, vid: int) -> str | None:
    """The data path the host runs the VNET on (`counters.ebpf.vnets`)."""
    return next((str(v["path"]) for v in gk(lab, host).call("counters")["ebpf"]["vnets"] if v["vnet"] == vid), None)


def keyed_with_members(lab: Lab, host: str, vid: int, members: list[str]) -> bool:
    v = vnet_on(lab, host, vid)
    return v is not None and v["members"] == members and v["key_fingerprint"] is not None


@pytest.mark.parametrize("path", ["auto", "userspace"])  # on auto, the VNET moves from eBPF to the forwarder
def test_r21_security_and_mtu_changes_reach_hosts_that_have_the_vnet(make_lab: Callable[..., Lab], path: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", path)
    lab = make_lab(hosts=2, manager=True)
    apply(lab)
    status, body = call(lab, "GET", "/v1/farms/conv")
    assert status == 200 and isinstance(body, dict)
    vid = body["status"]["vnet_ids"]["net"]
    hosts = [h.name for h in lab.hosts]
    assert wait_until(lambda: all(vnet_on(lab, h, vid) for h in hosts), timeout=30)
    h1, h2 = lab.hosts  # R18: keys on a `none` VNET (VARP signed), the other host as member
    assert wait_until(lambda: keyed_with_members(lab, h1.name, vid, [h2.underlay_ip]), timeout=15)
    assert wait_until(lambda: keyed_with_members(lab, h2.name, vid, [h1.underlay_ip]), timeout=15)
    assert all(vnet_on(lab, h, vid)["security"] == "none" for h in hosts)  # type: ignore[index]
    plain = "ebpf" if path == "auto" else "userspace"  # auto's choice for a security-none UDP VNET
    assert all(datapath(lab, h, vid) == plain for h in hosts), [datapath(lab, h, vid) for h in hosts]
    add_endpoint(lab, "e1", "h1", vid, "10.5.0.201/24")
    add_endpoint(lab, "e2", "h2", vid, "10.5.0.202/24")
    assert ping(lab, "e1", "10.5.0.202").returncode == 0

    apply(lab, "\n      security: conf")  # the same VNET, now encrypted
    assert wait_until(lambda: all((vnet_on(lab, h, vid) or {}).get("security") == "conf" for h in hosts),
                      timeout=30), [vnet_on(lab, h, vid) for h in hosts]
    assert wait_until(lambda: ping(lab, "e1", "10.5.0.202", count=1).returncode == 0, timeout=10)
    assert all(datapath(lab, h, vid) == "userspace" for h in hosts)  # made again, secured: the forwarder's
    esp = {h: gk(lab, h).call("counters")["esp_sa"] for h in hosts}
    assert all(c["inbound_sas"] >= 1 for c in esp.values()), esp  # the ping went as ESP

    apply(lab, "\n      security: conf\n      mtu: 1300")
    assert wait_until(lambda: all((vnet_on(lab, h, vid) or {}).get("mtu") == 1300 for h in hosts), timeout=30)
    assert wait_until(lambda: ping(lab, "e1", "10.5.0.202", count=1).returncode == 0, timeout=10)
    assert all(vnet_on(lab, h, vid)["ports"] for h in hosts)  # type: ignore[index]  # plugged back in
