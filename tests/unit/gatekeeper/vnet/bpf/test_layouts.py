"""Map layouts of the eBPF data path: round trips, sizes equal to vnet_dp.c's structs, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.vnet.bpf import layouts

ips = st.ip_addresses(v=4).map(str)
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
vnets = st.integers(1, layouts.VNET_MAX)


def test_sizes_match_the_c_structs() -> None:
    # struct cfg 16, fdb_key 12, fdb_val 8, local_val 16, members_val 4 + 4*8, event 20
    assert layouts.SIZES == {"cfg": 16, "fdb_key": 12, "fdb_val": 8, "local": 16, "members": 36, "event": 20,
                             "vstats": 32}


def test_counter_names_are_unique() -> None:
    assert len(set(layouts.COUNTERS)) == len(layouts.COUNTERS) == 18


@given(ips, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_cfg_round_trip(ip: str, ifindex: int, flags: int) -> None:
    cfg = layouts.Cfg(ip, ifindex, flags)
    assert layouts.Cfg.unpack(cfg.pack()) == cfg


@given(vnets, macs, ips)
def test_fdb_round_trip(vnet: int, mac: str, ip: str) -> None:
    key = layouts.FdbKey(vnet, mac)
    raw = key.pack()
    assert len(raw) == layouts.SIZES["fdb_key"]
    assert raw[:4] == vnet.to_bytes(4, "little") and raw[10:] == b"\0\0"
    assert layouts.FdbKey.unpack(raw) == key
    assert layouts.unpack_fdb_val(layouts.pack_fdb_val(ip)) == ip


@given(st.lists(ips, max_size=layouts.MAX_MEMBERS))
def test_members_round_trip(members: list[str]) -> None:
    assert layouts.unpack_members(layouts.pack_members(members)) == members


@given(st.integers(0, 2**32 - 1), st.integers(0, 1), st.integers(68, 65535), st.integers(0, 2**32 - 1))
def test_local_round_trip(ifindex: int, flags: int, mtu: int, punt: int) -> None:
    loc = layouts.Local(ifindex, flags, mtu, punt)
    assert layouts.Local.unpack(loc.pack()) == loc


@given(st.sampled_from([layouts.EV_MISS, layouts.EV_NO_NEIGH]), vnets, macs, ips)
def test_event_round_trip(kind: int, vnet: int, mac: str, ip: str) -> None:
    ev = layouts.Event(kind, vnet, mac, ip)
    assert layouts.Event.unpack(ev.pack()) == ev


@pytest.mark.parametrize(
    ("call", "msg"),
    [
        (lambda: layouts.FdbKey(0, "02:00:00:00:00:01").pack(), "VNET id 0"),
        (lambda: layouts.FdbKey(4096, "02:00:00:00:00:01").pack(), "VNET id 4096"),
        (lambda: layouts.FdbKey(1, "02:00:00:00:01").pack(), "not a MAC"),
        (lambda: layouts.FdbKey(1, "zz:00:00:00:00:01").pack(), "not a MAC"),
        (lambda: layouts.pack_fdb_val("10.0.0.300"), "not an IPv4"),
        (lambda: layouts.pack_members(["10.0.0.1"] * 9), "at most 8"),
        (lambda: layouts.Event.unpack(b"\0" * 5), "need 20"),
        (lambda: layouts.unpack_members((9).to_bytes(4, "little") + bytes(32)), "claims 9"),
    ],
)
def test_bad_input_names_the_field(call: object, msg: str) -> None:
    with pytest.raises(layouts.LayoutError, match=msg):
        call()  # type: ignore[operator]


def test_sizes_match_the_compiled_object_btf() -> None:
    import re
    import shutil
    import subprocess

    from gatekeeper.vnet.bpf.loader import default_object

    obj = default_object()
    if not obj.exists() or not shutil.which("bpftool"):
        pytest.skip(f"no {obj} or bpftool: run make bootstrap (scripts/build-bpf.sh)")
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(obj)], capture_output=True, text=True,
                         check=True).stdout
    sizes = {m[1]: int(m[2]) for m in re.finditer(r"STRUCT '(\w+)' size=(\d+)", out)}
    names = {"cfg": "cfg", "fdb_key": "fdb_key", "fdb_val": "fdb_val", "local": "local_val",
             "members": "members_val", "vstats": "vstats"}
    assert {py: sizes[c] for py, c in names.items()} == {py: layouts.SIZES[py] for py in names}


def test_vstats_is_four_u64() -> None:
    assert layouts.SIZES["vstats"] == 32
    assert layouts.VSTATS.unpack(layouts.VSTATS.pack(1, 2, 3, 4)) == (1, 2, 3, 4)
