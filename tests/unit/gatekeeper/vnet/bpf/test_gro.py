"""GRO after decapsulation per underlay: ethtool output parsed (hypothesis round trips), the choice
for a default veth, a wire-like veth and a NIC, the warning for UDP GRO forwarding, and on a real
veth pair (root only) the features read back and the pair set for both choices."""

from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.vnet.bpf import gro

DEFAULT_VETH = """Features for ul0:
rx-checksumming: on
tx-checksumming: on
\ttx-checksum-ipv4: off [fixed]
tcp-segmentation-offload: on
\ttx-tcp-segmentation: on
generic-segmentation-offload: on
generic-receive-offload: off
large-receive-offload: off [fixed]
tx-udp_tnl-segmentation: on
rx-gro-list: off
rx-udp-gro-forwarding: off
"""
WIRE_LIKE = DEFAULT_VETH.replace("tcp-segmentation-offload: on", "tcp-segmentation-offload: off") \
    .replace("generic-segmentation-offload: on", "generic-segmentation-offload: off")
ETHTOOL_I = "driver: veth\nversion: 1.0\nfirmware-version: \nbus-info: \n"

names = st.from_regex(r"[a-z][a-z0-9_-]{0,30}", fullmatch=True)
suffix = st.sampled_from(["", " [fixed]", " [requested on]", " [requested off]"])


def test_parses_ethtool_k_and_i() -> None:
    f = gro.parse_features(DEFAULT_VETH)
    assert f["generic-segmentation-offload"] and f["tx-udp_tnl-segmentation"] and not f["tx-checksum-ipv4"]
    assert "Features for ul0" not in " ".join(f)
    assert gro.parse_driver(ETHTOOL_I) == "veth"
    assert gro.parse_driver("version: 1\n") == ""


@given(st.dictionaries(names, st.tuples(st.booleans(), suffix, st.sampled_from(["", "\t", "\t\t"])), max_size=40))
def test_feature_lines_round_trip(features: dict[str, tuple[bool, str, str]]) -> None:
    text = "Features for x0:\n" + "".join(f"{indent}{k}: {'on' if on else 'off'}{sfx}\n"
                                          for k, (on, sfx, indent) in features.items())
    assert gro.parse_features(text) == {k: on for k, (on, _, _) in features.items()}


@given(st.text(max_size=300))
def test_any_text_parses_to_a_mapping_without_raising(text: str) -> None:
    assert all(isinstance(v, bool) for v in gro.parse_features(text).values())


def test_default_veth_passes_superframes_so_gro_off() -> None:
    c = gro.choose("ul0", "veth", gro.parse_features(DEFAULT_VETH))
    assert not c.on and "super-frames whole" in c.reason and c.warning is None


def test_wire_like_veth_segments_so_gro_on() -> None:
    c = gro.choose("ul0", "veth", gro.parse_features(WIRE_LIKE))
    assert c.on and "generic-segmentation-offload off" in c.reason


def test_udp_tunnel_segmentation_off_is_wire_like_too() -> None:
    c = gro.choose("ul0", "veth", gro.parse_features(DEFAULT_VETH.replace("tx-udp_tnl-segmentation: on",
                                                                          "tx-udp_tnl-segmentation: off")))
    assert c.on and "tx-udp_tnl-segmentation off" in c.reason


@pytest.mark.parametrize("driver", ["ixgbe", "virtio_net", ""])
def test_a_nic_gets_gro_on(driver: str) -> None:
    c = gro.choose("eth0", driver, gro.parse_features(DEFAULT_VETH))
    assert c.on and "NIC" in c.reason
    assert c.as_dict()["gro_after_decap"] is True


def test_udp_gro_forwarding_on_the_underlay_is_warned_about() -> None:
    c = gro.choose("eth0", "ixgbe", gro.parse_features(DEFAULT_VETH.replace("rx-udp-gro-forwarding: off",
                                                                            "rx-udp-gro-forwarding: on")))
    assert c.warning is not None and "ethtool -K eth0 rx-udp-gro-forwarding off" in c.warning


def test_metrics_line() -> None:
    assert gro.metrics_lines(None) == []
    lines = gro.metrics_lines(gro.GroChoice("ul0", "veth", False, "x"))
    assert lines[-1] == 'softudc_vnet_gro_after_decap{device="ul0",driver="veth"} 0'


def test_a_missing_device_is_a_clear_error() -> None:
    with pytest.raises(gro.GroError, match="nosuchdev0"):
        gro.choose_for("nosuchdev0")


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def test_real_veth_pair_read_and_set_both_ways() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a veth pair needs root")
    a, b = f"gro{os.getpid() % 100000}a", f"gro{os.getpid() % 100000}b"
    _sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    try:
        assert not gro.choose_for(a).on  # a default veth
        _sh("ethtool", "-K", a, "gso", "off")
        choice = gro.choose_for(a)
        assert choice.on and choice.driver == "veth"
        gro.apply_veth(choice, a, b)
        assert not gro.parse_features(_sh("ethtool", "-k", a))["tx-tcp-segmentation"]
        assert gro.parse_features(_sh("ethtool", "-k", b))["generic-receive-offload"]
        gro.apply_veth(gro.GroChoice(a, "veth", False, "back"), a, b)
        assert gro.parse_features(_sh("ethtool", "-k", a))["tx-tcp-segmentation"]
        assert not gro.parse_features(_sh("ethtool", "-k", b))["generic-receive-offload"]
    finally:
        subprocess.run(["ip", "link", "del", a], check=False, timeout=30)
