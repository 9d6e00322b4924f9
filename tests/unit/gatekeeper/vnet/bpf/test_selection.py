"""Path selection: defaults, forcing either path, clear errors, config switch."""

from __future__ import annotations

import pytest

from gatekeeper.config import ConfigError, parse_config
from gatekeeper.vnet.bpf.selection import PathChoice, SelectionError, bpf_problem, choose, metrics_lines

BASE = {"host": "h1", "api_socket": "/tmp/x.sock",
        "underlay": {"interface": "u0", "address": "10.0.0.1"}}


def test_auto_puts_plain_udp_vnets_on_ebpf() -> None:
    assert choose(7, "auto", "udp", "none", 3, None).path == "ebpf"


@pytest.mark.parametrize(("transport", "security", "members", "why"), [
    ("udp", "conf", 2, "security conf needs ESP"),
    ("udp", "auth", 2, "security auth"),
    ("raw", "none", 2, "transport raw"),
    ("udp", "none", 9, "at most 8"),
])
def test_auto_keeps_the_rest_in_userspace_and_says_why(transport: str, security: str, members: int, why: str) -> None:
    c = choose(7, "auto", transport, security, members, None)
    assert c.path == "userspace" and why in c.reason


def test_auto_without_bpf_falls_back() -> None:
    c = choose(7, "auto", "udp", "none", 2, "not root")
    assert c == PathChoice(7, "userspace", "not root")


def test_forcing_userspace_wins() -> None:
    assert choose(7, "userspace", "udp", "none", 2, None).path == "userspace"


def test_forcing_ebpf_where_impossible_is_an_error_naming_the_vnet() -> None:
    with pytest.raises(SelectionError, match=r"vnet 7: dataplane\.datapath = ebpf, but security conf"):
        choose(7, "ebpf", "udp", "conf", 2, None)
    with pytest.raises(SelectionError, match="but not root"):
        choose(7, "ebpf", "udp", "none", 2, "not root")
    with pytest.raises(SelectionError, match="expected one of"):
        choose(7, "fast", "udp", "none", 2, None)


def test_config_switch() -> None:
    assert parse_config(BASE).datapath == "auto"  # the default (docs/ebpf.md)
    assert parse_config({**BASE, "dataplane": {"datapath": "userspace"}}).datapath == "userspace"
    with pytest.raises(ConfigError, match=r"dataplane\.datapath: 'bpf', expected 'auto', 'ebpf' or 'userspace'"):
        parse_config({**BASE, "dataplane": {"datapath": "bpf"}})


def test_metrics_name_each_vnets_path() -> None:
    lines = metrics_lines([PathChoice(3, "ebpf", "x"), PathChoice(4, "userspace", "y")])
    assert 'softudc_vnet_datapath{vnet="3",path="ebpf"} 1' in lines
    assert 'softudc_vnet_datapath{vnet="4",path="userspace"} 1' in lines


def test_probe_names_a_missing_object(tmp_path: object) -> None:
    from pathlib import Path

    problem = bpf_problem(Path(str(tmp_path)) / "none.o")
    assert problem is not None and ("none.o missing" in problem or "not root" in problem)
