"""FastPath's choices that need no BPF: forced userspace, no state dir, no member list, secured VNETs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gatekeeper.config import parse_config
from gatekeeper.vnet.bpf.fastpath import FastPath
from gatekeeper.vnet.bpf.selection import SelectionError
from gatekeeper.vnet.port import VnetPort

CONFIG = parse_config({"host": "h1", "api_socket": "/tmp/x.sock",
                       "underlay": {"interface": "nosuchdev0", "address": "10.0.0.1"},
                       "dataplane": {"datapath": "auto"}})


def port(members: tuple[str, ...] = ("10.0.0.2",), security: str = "none") -> VnetPort:
    return VnetPort(7, -1, "udp", 1452, members, False, security)


def test_userspace_setting_never_touches_bpf(tmp_path: Path) -> None:
    fp = FastPath(replace(CONFIG, datapath="userspace"), tmp_path / "state.json")
    assert fp.add(port(), "vntap7").path == "userspace"
    assert fp.path(7) == "userspace" and not (tmp_path / "bpf").exists()
    fp.sync({(7, b"\x02" * 6): "10.0.0.2"})  # nothing loaded: a no-op
    fp.stop()


def test_without_a_state_dir_auto_stays_in_userspace() -> None:
    choice = FastPath(CONFIG, None).add(port(), "vntap7")
    assert (choice.path, choice.reason) == ("userspace", "no state directory to pin maps in")


def test_secured_vnets_stay_in_userspace(tmp_path: Path) -> None:
    choice = FastPath(CONFIG, None).add(port(security="conf"), "vntap7")
    assert choice.path == "userspace"


def test_no_member_list_still_means_ebpf_taking_any_sender(tmp_path: Path) -> None:
    """A VNET on this host only so far (the manager's first VM of a farm) goes on eBPF like any
    other: it once stayed in userspace for good, and when a VM migrated to a host new to the VNET,
    that host's eBPF super-frames reached this one's userspace socket (e2e test_volumes)."""
    fp = FastPath(CONFIG, tmp_path / "state.json")
    fp._probed, fp._problem = True, None  # as if BPF worked here
    choice = fp.add(port(members=()), "vntap7")
    assert "eBPF set-up failed" in choice.reason  # it tried: the underlay device does not exist
    assert fp._member_ips(()) == []  # ebs_members n = 0: any sender (vnet_dp.c is_member)
    assert fp._member_ips(("10.0.0.2",)) == ["10.0.0.1", "10.0.0.2"]


def test_auto_falls_back_when_set_up_fails_and_forced_ebpf_raises(tmp_path: Path) -> None:
    fp = FastPath(CONFIG, tmp_path / "state.json")
    fp._probed, fp._problem = True, None
    choice = fp.add(port(), "vntap7")  # the underlay device does not exist
    assert choice.path == "userspace" and "eBPF set-up failed" in choice.reason
    assert fp.status()["vnets"] == [{"vnet": 7, "path": "userspace", "reason": choice.reason}]
    forced = FastPath(replace(CONFIG, datapath="ebpf"), None)
    with pytest.raises(SelectionError, match=r"vnet 7: dataplane\.datapath = ebpf, but no state directory"):
        forced.add(port(), "vntap7")
