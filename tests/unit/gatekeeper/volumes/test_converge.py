"""The storage service made what the manager wants: pure actions, then a real pool and real
qemu-storage-daemons (the conftest's), and the disks a VM's domain gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.hypervisor.domain import DiskSpec
from gatekeeper.volumes import converge as vc
from gatekeeper.volumes.converge import VolumeConverger, disk_specs, volume_actions
from gatekeeper.volumes.pool import VolumeError
from gatekeeper.volumes.service import VolumeService
from softudc.model.hoststate import DesiredDisk, DesiredVolume

MiB = 1 << 20


def want(name: str, allowed: tuple[str, ...] = (), keep: bool = False, backing: str | None = None) -> DesiredVolume:
    return DesiredVolume(name=name, size_bytes=4 * MiB, allowed=list(allowed), keep=keep, backing=backing)


def ops(actions: list[vc.VolumeAction]) -> list[str]:
    return [f"{a.op} {a.name}" for a in actions]


def test_actions_create_export_allow_and_remove_what_is_not_wanted() -> None:
    assert ops(volume_actions([want("a", ("h1",)), want("b")], {}, {})) == ["create a", "export a", "create b"]
    have = {"a": {"allowed": ["h1"]}, "b": {}, "old": {"allowed": ["h1"]}, "kept": {}, "master": {}}
    managed = {"a": False, "b": False, "old": False, "kept": True}
    assert ops(volume_actions([want("a", ("h1", "h3")), want("b")], have, managed)) == ["allow a"]  # not due yet
    due = volume_actions([want("a", ("h1",))], have, managed, {"b", "old", "kept"})
    assert ops(due) == ["delete b", "forget b", "forget kept", "unexport old", "delete old", "forget old"]
    assert ops(volume_actions([want("a")], have, managed)) == ["unexport a"]  # no host needs it any more
    assert not any(a.name == "master" for a in due)  # never made for the manager: left alone


@given(st.dictionaries(st.sampled_from("abcdef"), st.lists(st.sampled_from(["h1", "h2", "h3"]), max_size=3)),
       st.dictionaries(st.sampled_from("abcdef"), st.none() | st.lists(st.sampled_from(["h1", "h2"]), max_size=2)),
       st.dictionaries(st.sampled_from("abcdef"), st.booleans()))
def test_after_the_actions_the_pool_is_what_is_wanted(wanted: dict[str, list[str]],
                                                      have: dict[str, list[str] | None],
                                                      managed: dict[str, bool]) -> None:
    pool = {n: ({} if a is None else {"allowed": sorted(set(a))}) for n, a in have.items()}
    for a in volume_actions([want(n, tuple(h)) for n, h in wanted.items()], pool, managed, set(managed)):
        if a.op == "create":
            pool[a.name] = {}
        elif a.op in ("export", "allow"):
            pool[a.name] = {"allowed": a.args["allowed"]}
        elif a.op == "unexport":
            pool[a.name] = {}
        elif a.op == "delete":
            assert "allowed" not in pool[a.name]  # unexported first
            del pool[a.name]
    for n, hosts in wanted.items():
        assert pool[n] == ({"allowed": sorted(set(hosts))} if hosts else {})
    for n, keep in managed.items():
        if n not in wanted:
            assert (n in pool) == (keep and n in have)  # kept ones stay, unexported
            assert "allowed" not in pool.get(n, {})


def test_disk_specs() -> None:
    pool = type("P", (), {"path": lambda self, n: Path("/pool") / f"{n}.qcow2"})()
    disks = [DesiredDisk(volume="f--a--d", target="vdb", host="h2", address="10.0.0.2", port=10810),
             DesiredDisk(volume="f--a--s", target="vdc", host="h1", local=True)]
    assert disk_specs(disks, pool) == (DiskSpec("vdb", nbd=("10.0.0.2", 10810, "f--a--d")),
                                       DiskSpec("vdc", path="/pool/f--a--s.qcow2"))
    with pytest.raises(ValueError, match="runs no storage service"):
        disk_specs(disks, None)
    with pytest.raises(ValueError, match="export on h2 is not known yet"):
        disk_specs([DesiredDisk(volume="f--a--d", target="vdb", host="h2")], pool)


def test_the_converger_holds_clones_exports_and_removes_after_the_grace(service: VolumeService, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    service.create("gold", 8 * MiB)
    state = tmp_path / "volumes.json"
    c = VolumeConverger(service, state)
    done, errors = c.converge([want("f--a--d", ("h1",), backing="gold"), want("f--a--k", keep=True)])
    assert errors == [] and done == ["volume.create f--a--d", "volume.export f--a--d", "volume.create f--a--k"]
    have = c.have()
    assert have["gold"] == {} and have["f--a--k"] == {} and have["f--a--d"]["allowed"] == ["h1"]
    assert service.describe("f--a--d")["backing"] == "gold.qcow2"
    assert c.converge([want("f--a--d", ("h1",), backing="gold"), want("f--a--k", keep=True)]) == ([], [])
    assert c.converge([want("f--a--d", ("h1", "h3"), backing="gold")])[0] == ["volume.allow f--a--d"]
    again = VolumeConverger(service, state)  # a restarted gatekeeper remembers what it made
    assert again.managed == {"f--a--d": False, "f--a--k": True}
    assert again.converge([]) == ([], [])  # unwanted, not for long enough
    monkeypatch.setattr(vc, "GRACE_S", 0.0)
    done, errors = again.converge([])
    assert errors == [] and done == ["volume.unexport f--a--d", "volume.delete f--a--d", "volume.forget f--a--d",
                                     "volume.forget f--a--k"]
    assert set(again.have()) == {"gold", "f--a--k"} and again.managed == {}
    assert service.exports.names() == []


def test_an_export_gone_between_listing_and_reading_costs_only_its_own_entry(
        service: VolumeService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One export record that cannot be read (unexported meanwhile) is that volume's 'not
    exported' in the host report, not an error that leaves every volume out of it."""
    c = VolumeConverger(service, tmp_path / "volumes.json")
    assert c.converge([want("f--a--d", ("h1",)), want("f--a--e", ("h1",))])[1] == []
    describe = service.exports.describe

    def unexported_meanwhile(name: str) -> dict[str, object]:
        if name == "f--a--d":
            raise VolumeError(f"volume {name} is not exported")
        return describe(name)

    monkeypatch.setattr(service.exports, "describe", unexported_meanwhile)
    have = c.have()
    assert have["f--a--d"] == {} and have["f--a--e"]["allowed"] == ["h1"]


def test_the_converger_makes_a_volume_from_the_image_once(service: VolumeService) -> None:
    images = service.pool.directory / "images"
    images.mkdir()
    with open(images / "test-guest.img", "wb") as f:
        f.write(b"\xab" * MiB)
    root = DesiredVolume(name="f--a-0--root", size_bytes=4 * MiB, image="test-guest")
    assert volume_actions([root], {}, {})[0].args == {"size_bytes": 4 * MiB, "backing": None, "image": "test-guest"}
    c = VolumeConverger(service)
    assert c.converge([root]) == (["volume.create f--a-0--root"], [])
    assert service.describe("f--a-0--root")["size_bytes"] == 4 * MiB
    assert c.converge([root]) == ([], [])  # made once: the image is not copied again
    small = DesiredVolume(name="f--a-1--root", size_bytes=MiB // 2, image="test-guest")
    done, errors = c.converge([root, small])
    assert done == [] and errors == ["volume.create f--a-1--root: volume f--a-1--root: image test-guest "
                                     f"({images}/test-guest.img) is 1048576 bytes, more than the volume's size "
                                     "524288; set the volume's `size` in the farm descriptor "
                                     "(vms[].volumes[].size) to at least 1Mi"]


def test_a_vm_waits_for_its_disks_exports_then_starts_with_them() -> None:
    from gatekeeper.converge import Here, converge

    disk = {"volume": "f--a--d", "target": "vdb", "host": "h2"}
    vm = {"name": "f--a", "vcpus": 1, "memory_mib": 128, "disks": [disk]}
    [wait] = converge({"contract": 3, "vms": [vm]}, Here([], []))
    assert (wait.op, wait.args) == ("vm.wait", {"name": "f--a", "volumes": ["f--a--d"]})
    exported = {**disk, "address": "10.0.0.2", "port": 10810}
    [start] = converge({"contract": 3, "vms": [{**vm, "disks": [exported]}]}, Here([], []))
    [started] = start.args["disks"]  # with the disk's other fields at their defaults (QoS none, ...)
    assert start.op == "vm.start" and started.items() >= {**exported, "local": False}.items()
    unplaced = {"contract": 3, "vms": [{**vm, "disks": [{"volume": "f--a--d", "target": "vdb"}]}]}
    assert [a.op for a in converge(unplaced, Here([], []))] == ["vm.wait"]
    running = Here([], [{"name": "f--a", "state": "running"}])
    assert converge({"contract": 3, "vms": [vm]}, running) == []  # a running VM is left alone
