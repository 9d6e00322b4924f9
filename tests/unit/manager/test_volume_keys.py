"""Encrypted volumes' keys: made once in the store, derived per volume, handed to the storage host
only (in its desired state), never to a view without keys; QoS limits go with the VM's disk."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from softudc.manager.desired import DesiredInputs
from softudc.manager.store import SqliteStore
from softudc.manager.volume_keys import KIND, MASTER, VolumeKeys, derive
from softudc.manager.volumes import VolumeView
from softudc.model.farm import Farm, VmDef
from softudc.model.volume import VolumeDef

GiB = 1 << 30


def farm(*volumes: VolumeDef) -> Farm:
    return Farm("shop", (), (VmDef("db", 1, 1, 256, "img", (), volumes=volumes),))


STATUS: dict[str, Any] = {"instances": [{"name": "db-0", "vm": "db", "host": "h1"}]}
REPORTS: dict[str, dict[str, Any]] = {
    "h1": {"contract": 3, "pool": {"free_bytes": GiB}},
    "h2": {"contract": 3, "pool": {"free_bytes": 4 * GiB},
           "volumes": {"shop--db-0--sec": {"address": "10.0.0.2", "port": 10810, "allowed": ["h1"]}}}}


def test_the_secret_is_made_once_and_kept_in_the_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    keys = [VolumeKeys(store) for _ in range(4)]
    got: list[str] = []
    threads = [threading.Thread(target=lambda k=k: got.append(k("shop--db-0--sec"))) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got[0]) == 64  # every manager derives the same key
    stored = store.get(KIND, MASTER)
    assert stored is not None and got[0] == derive(stored.spec["secret"], "shop--db-0--sec")
    assert VolumeKeys(SqliteStore(tmp_path / "s.db"))("shop--db-0--sec") == got[0]  # after a restart too
    assert VolumeKeys(SqliteStore(tmp_path / "other.db"))("shop--db-0--sec") != got[0]  # another secret


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_each_volume_gets_its_own_key(a: str, b: str) -> None:
    secret = "11" * 32
    assert (derive(secret, a) == derive(secret, b)) == (a == b)


def test_only_the_storage_host_gets_the_key_and_the_vm_host_gets_the_limits(tmp_path: Path) -> None:
    f = farm(VolumeDef("sec", GiB, "remote", encrypted=True, iops=100, mbps=4), VolumeDef("plain", GiB, "remote"))
    keys = VolumeKeys(SqliteStore(tmp_path / "s.db"))
    inputs = DesiredInputs([(f, STATUS)], REPORTS, lambda _f, _v: {}, keys)
    h2 = inputs.json("h2")
    by_name = {v["name"]: v for v in h2["volumes"]}
    assert by_name["shop--db-0--sec"]["key"] == keys("shop--db-0--sec")
    assert "key" not in by_name["shop--db-0--plain"]
    h1 = inputs.json("h1")
    assert keys("shop--db-0--sec") not in str(h1)
    disks = h1["vms"][0]["disks"]
    assert disks[0] == {"volume": "shop--db-0--sec", "target": "vdb", "host": "h2", "address": "10.0.0.2",
                        "port": 10810, "iops": 100, "mbps": 4}
    assert "iops" not in disks[1] and "mbps" not in disks[1]


def test_a_view_without_keys_never_hands_out_an_encrypted_volume_as_a_plain_one() -> None:
    f = farm(VolumeDef("sec", GiB, "remote", encrypted=True), VolumeDef("plain", GiB, "remote"))
    view = VolumeView([(f, STATUS)], REPORTS)
    held = [v["name"] for h in ("h1", "h2") for v in view.for_host(h)]
    assert held == ["shop--db-0--plain"]
    assert "shop--db-0--sec" in view.plan.volumes  # still planned: the API shows it
