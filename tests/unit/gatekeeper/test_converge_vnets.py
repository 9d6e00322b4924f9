"""R21: converge compares a VNET the host has with what the manager wants, not only its id."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.converge import Here, converge, vnet_change, wanted_fingerprint
from softudc.model.hoststate import ContractError, DesiredVnet, parse
from softudc.security.keys import VnetKeys

KEYS = {"send_epoch": 3, "secrets": {"3": "ab" * 32}}
ME = "192.0.2.1"


def want(**over: Any) -> dict[str, Any]:
    return {"id": 7, "security": "conf", "mtu": None, "keys": KEYS, "members": [ME, "192.0.2.2"], **over}


def have(**over: Any) -> dict[str, Any]:
    """What `vnet.list` says of the VNET when it matches `want()`."""
    installed = VnetKeys("conf", {3: bytes.fromhex("ab" * 32)}, 3)
    return {"vnet": 7, "security": "conf", "mtu": 1398, "members": ["192.0.2.2"],
            "key_fingerprint": installed.fingerprint(), **over}


def ops(w: dict[str, Any], h: dict[str, Any]) -> list[str]:
    here = Here([7], [], {7}, vnet_info={7: h}, underlay=ME)
    return [a.op for a in converge({"vnets": [w], "vms": []}, here)]


def test_r21_a_vnet_as_wanted_is_left_alone() -> None:
    assert ops(want(), have()) == []


def test_r21_a_key_rotation_reaches_the_host() -> None:
    rotated = {"send_epoch": 4, "secrets": {"3": "ab" * 32, "4": "cd" * 32}}
    assert ops(want(keys=rotated), have()) == ["vnet.update"]


def test_r21_a_new_secret_under_the_same_epoch_reaches_the_host() -> None:
    assert ops(want(keys={"send_epoch": 3, "secrets": {"3": "ef" * 32}}), have()) == ["vnet.update"]


@pytest.mark.parametrize("level", ["none", "auth"])
def test_r21_a_changed_security_level_recreates_the_vnet(level: str) -> None:
    assert ops(want(security=level), have()) == ["vnet.recreate"]


def test_r21_a_changed_mtu_recreates_the_vnet() -> None:
    assert ops(want(mtu=1300), have()) == ["vnet.recreate"]
    assert ops(want(mtu=1398), have()) == []


def test_r21_changed_members_are_applied() -> None:
    assert ops(want(members=[ME, "192.0.2.2", "192.0.2.3"]), have()) == ["vnet.update"]
    assert ops(want(members=None), have()) == []  # the manager does not know them all: keep what is there


def test_a_vnet_the_manager_did_not_make_is_not_compared() -> None:
    here = Here([7], [], set(), underlay=ME)  # no vnet_info: not ours to change
    assert converge({"vnets": [want(security="none")], "vms": []}, here) == []


def test_the_fingerprint_of_wanted_keys_matches_the_installed_one() -> None:
    installed = VnetKeys(None, {1: b"k" * 32}, 1)
    assert wanted_fingerprint("none", {"send_epoch": 1, "secrets": {"1": (b"k" * 32).hex()}}) == installed.fingerprint()


_secrets = st.dictionaries(st.sampled_from(["3", "4", "x"]), st.sampled_from(["ab" * 32, "ab", "", "zz"]), max_size=3)


@given(st.dictionaries(st.sampled_from(["send_epoch", "secrets", "other"]),
                       st.one_of(st.none(), st.integers(-1, 70000), st.text(max_size=8), _secrets)) |
       st.fixed_dictionaries({"send_epoch": st.integers(0, 5), "secrets": _secrets}))
def test_malformed_wanted_keys_are_refused_by_the_contract_or_compared_without_raising(keys: dict[str, Any]) -> None:
    try:
        vnet = parse(DesiredVnet, want(keys=keys))
    except ContractError as e:  # refused before converge, each problem under `keys`
        assert e.problems and all(p.startswith("keys") for p in e.problems), e.problems
        return
    assert vnet_change(vnet, have(), ME) in (None, "vnet.update")
