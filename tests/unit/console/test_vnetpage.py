"""The VNET page: member hosts with their underlay addresses, and each instance's MAC, address and host."""

from __future__ import annotations

from softudc.model.hoststate import nic_mac
from tests.unit.console.test_views import Lab
from tests.unit.console.test_vmpage import placed


def test_members_and_where_each_mac_lives(lab: Lab) -> None:
    where = placed(lab)
    html = lab.client(lab.admin).get("/console/farms/demo/vnets/front").text
    for n in ("web-0", "web-1", "web-2"):
        assert f'data-mac="{nic_mac("demo", n, "front")}"' in html
        assert f'data-member="{where[n]}"' in html
    assert "db-0" not in html  # on back only
    assert "192.0.2." in html and "10.0.0.0/24" in html
    back = lab.client(lab.admin).get("/console/fragments/farms/demo/vnets/back").text
    assert "10.0.0.20" in back and "conf" in back and f'data-member="{where["db-0"]}"' in back


def test_unknown_vnet_and_unreadable_farm(lab: Lab) -> None:
    placed(lab)
    assert lab.client(lab.admin).get("/console/farms/demo/vnets/nope").status_code == 404
    assert lab.client(lab.viewer).get("/console/farms/nope/vnets/front").status_code == 404
