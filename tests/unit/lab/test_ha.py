"""An HA lab's records and command lines (no namespace touched): the store URL of its etcd
members, each manager's options, who leads as a status says, and gatekeepers listing every manager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from softudc.lab import ha
from softudc.lab.lab import gatekeeper_config
from softudc.lab.state import EtcdMemberInfo, Host, Lab, LabError, LabSpec, ManagerProc


def _lab(tmp_path: Path, ha_lab: bool = True) -> Lab:
    lab = Lab(LabSpec("t1", hosts=1, manager=True, ha=ha_lab), str(tmp_path))
    lab.hosts = [Host("h1", "sudc-t1-h1", 0, "10.100.0.11", "10.99.0.11", "a.sock", "c.toml", "g.log")]
    lab.manager_files = {"h1": {"ca": "ca.crt", "cert": "h1.crt", "key": "h1.key"}}
    if ha_lab:
        lab.managers = [ManagerProc(f"m{i + 1}", a, 100 + i) for i, a in enumerate(ha.MANAGER_ADDRS)]
        lab.etcd = [EtcdMemberInfo(f"etcd{i}", a, 2379, 2380, 200 + i) for i, a in enumerate(ha.ETCD_ADDRS)]
    return lab


def test_each_manager_runs_on_the_etcd_cluster_with_its_id_and_address(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    assert ha.store_url(lab) == "etcd://10.99.0.5:2379,10.99.0.6:2379,10.99.0.7:2379"
    assert ha.manager_argv(lab, 1) == ["--store", "etcd://10.99.0.5:2379,10.99.0.6:2379,10.99.0.7:2379",
                                       "--id", "m2", "--advertise", "https://10.99.0.2:8443"]


def test_the_gatekeepers_list_every_manager_and_a_plain_lab_its_one(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    assert 'url = "https://10.99.0.1:8443,https://10.99.0.2:8443"\n' in gatekeeper_config(lab, lab.hosts[0])
    plain = _lab(tmp_path, ha_lab=False)
    assert 'url = "https://10.99.0.1:8443"\n' in gatekeeper_config(plain, plain.hosts[0])


@pytest.mark.parametrize(("status", "leader"), [
    ({"id": "m2", "role": "follower", "leader": {"id": "m1", "url": "https://10.99.0.1:8443"}}, "m1"),
    ({"id": "m2", "role": "follower", "leader": None}, None),  # an election under way
    (None, None),  # no answer
])
def test_who_leads_is_what_the_status_says(status: dict[str, Any] | None, leader: str | None) -> None:
    assert ha._leader_id(status) == leader


def test_a_manager_that_runs_is_not_started_twice(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    lab.managers[0].pid = 1  # init: always alive
    with pytest.raises(LabError, match="manager m1 runs already"):
        ha.restart_manager(lab, 0)
    lab.etcd[2].pid = 1
    with pytest.raises(LabError, match="etcd member etcd2 runs already"):
        ha.restart_etcd(lab, 2)
