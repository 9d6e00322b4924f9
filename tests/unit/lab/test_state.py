"""A lab's records: the spec's checks, and lab.json written by save() read back by load_lab()."""

from __future__ import annotations

from pathlib import Path

import pytest

from softudc.cli.errors import CliError
from softudc.lab.state import (
    Endpoint,
    EtcdMemberInfo,
    Host,
    Lab,
    LabError,
    LabSpec,
    ManagerProc,
    VnetdInfo,
    load_lab,
)


@pytest.mark.parametrize(("spec", "message"), [
    (LabSpec("Lab1"), "use 1-10 lowercase letters or digits"),
    (LabSpec("a", hosts=0), "hosts: 0 is out of range 1..200"),
    (LabSpec("a", hosts=2, segments=3), "must be between 1 and the host count"),
    (LabSpec("a", underlay_mtu=9001), "out of range 1280..9000"),
    (LabSpec("a", transport="tcp"), "expected 'udp' or 'raw'"),
    (LabSpec("a", flood="all"), "expected 'multicast' or 'members'"),
    (LabSpec("a", vnetd_peering="star"), "expected 'mesh' or 'chain'"),
    (LabSpec("a", datapath="kernel"), "datapath: 'kernel', expected 'auto' or 'ebpf' or 'userspace'"),
    (LabSpec("a", ha=True), r"several managers need the manager; add --manager"),
])
def test_a_bad_spec_is_refused_with_what_is_wrong(spec: LabSpec, message: str) -> None:
    with pytest.raises(LabError, match=message):
        spec.validate()


def test_a_saved_lab_loads_back_equal(tmp_path: Path) -> None:
    lab = Lab(LabSpec("t1", hosts=2, vms=True, varp={"stale_s": 30.0}), str(tmp_path))
    lab.hosts = [Host(f"h{i}", f"sudc-t1-h{i}", 0, f"10.100.0.{10 + i}", f"10.99.0.{10 + i}", "a.sock", "c.toml",
                      "g.log", pid=100 + i) for i in (1, 2)]
    lab.endpoints = {"c1": Endpoint("c1", "sudc-t1-c1", "h1", 5, "10.0.0.1", "52:54:00:00:00:01", "c1h")}
    lab.vnetds = [VnetdInfo(0, "sudc-t1-v0", "10.100.0.5", "v.sock", "v.toml", "v.log")]
    lab.manager_files = {"h1": {"ca": "ca.crt", "cert": "h1.crt", "key": "h1.key"}}
    lab.save()
    assert load_lab("t1", str(tmp_path)) == lab
    lab.spec.manager = lab.spec.ha = True  # an HA lab: its managers and etcd members too
    lab.managers = [ManagerProc("m1", "10.99.0.1", 7), ManagerProc("m2", "10.99.0.2")]
    lab.etcd = [EtcdMemberInfo(f"etcd{i}", f"10.99.0.{5 + i}", 2379, 2380, 20 + i) for i in range(3)]
    lab.etcd_token = "softudc-abc"
    lab.save()
    assert load_lab("t1", str(tmp_path)) == lab
    assert (tmp_path / "labs" / "t1" / "lab.json").exists() and not (tmp_path / "labs" / "t1" / "lab.json.tmp").exists()


def test_a_missing_lab_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"no lab 'x' .*`softudc lab up x`") as e:
        load_lab("x", str(tmp_path))
    assert isinstance(e.value, CliError)  # the CLI prints it and exits 1
