"""External snapshots against a real qemu-storage-daemon: a client writing over NBD+TLS before
and after a live snapshot; the snapshot, the volume and a clone each hold exactly their data."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.volumes import snapshots
from gatekeeper.volumes.converge import VolumeConverger
from gatekeeper.volumes.pool import VolumeError
from gatekeeper.volumes.service import VolumeService
from softudc.model.hoststate import DesiredVolume

MiB = 1 << 20


def nbd_io(export: dict[str, object], certs: Path, *commands: str) -> str:
    """qemu-io over the export's NBD+TLS, as host h1 (on its allow list)."""
    args = ["qemu-io", "--object", f"tls-creds-x509,id=t0,dir={certs / 'h1'},endpoint=client", "--image-opts",
            f"driver=nbd,host=127.0.0.1,port={export['port']},export={export['volume']},tls-creds=t0"]
    for c in commands:
        args += ["-c", c]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and "failed" not in done.stdout, done.stdout + done.stderr
    return done.stdout


def file_io(path: Path, *commands: str) -> str:
    args = ["qemu-io", "-f", "qcow2", "-r", "-U", str(path)]
    for c in commands:
        args += ["-c", c]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def holds(out: str) -> bool:
    return "Pattern verification failed" not in out


def test_live_snapshot_freezes_what_was_written_and_the_export_goes_on(service: VolumeService, certs: Path) -> None:
    service.create("v", 4 * MiB)
    e = service.export("v", ["h1"])
    nbd_io(e, certs, "write -P 0xa1 0 2M")
    frozen = snapshots.snapshot_file("v", "s1")
    assert frozen == "v.snap.s1"
    snapshots.take(service, "v", frozen)
    nbd_io(e, certs, "write -P 0xb2 0 1M")  # the same export, after the snapshot
    assert service.exports.describe("v")["pid"] == e["pid"]
    assert holds(nbd_io(e, certs, "read -P 0xa1 1M 1M"))  # read through the snapshot
    assert holds(nbd_io(e, certs, "read -P 0xb2 0 1M"))
    assert holds(file_io(service.pool.path(frozen), "read -P 0xa1 0 1M"))
    assert service.pool.info("v").backing == "v.snap.s1.qcow2"
    service.create("c", None, frozen)  # a clone of the snapshot: copy-on-write, the snapshot's size
    assert service.pool.info("c").size_bytes == 4 * MiB
    assert holds(file_io(service.pool.path("c"), "read -P 0xa1 0 1M"))
    with pytest.raises(VolumeError, match="already exists"):
        snapshots.take(service, "v", frozen)
    with pytest.raises(VolumeError, match="backing file of"):
        service.delete(frozen)
    snapshots.take(service, "v", snapshots.snapshot_file("v", "s2"))  # a second one: a chain of 3
    assert holds(nbd_io(e, certs, "read -P 0xb2 0 1M", "read -P 0xa1 1M 1M"))  # each layer read live
    assert snapshots.export_node(service, "v").startswith("ov")


def test_offline_snapshot_and_flatten(service: VolumeService) -> None:
    service.create("w", 2 * MiB)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", str(service.pool.path("w"))],
                   check=True, capture_output=True)
    snapshots.take(service, "w", "w.snap.a")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x22 1M 1M", str(service.pool.path("w"))],
                   check=True, capture_output=True)
    assert service.pool.info("w").backing == "w.snap.a.qcow2"
    assert snapshots.flatten(service, "w") == "done"
    assert service.pool.info("w").backing is None
    assert holds(file_io(service.pool.path("w"), "read -P 0x11 0 1M", "read -P 0x22 1M 1M"))
    assert holds(file_io(service.pool.path("w.snap.a"), "read -P 0x11 0 1M", "read -P 0 1M 1M"))


def test_live_flatten_streams_the_chain_into_the_volume(service: VolumeService, certs: Path) -> None:
    service.create("f", 2 * MiB)
    e = service.export("f", ["h1"])
    nbd_io(e, certs, "write -P 0x33 0 1M")
    snapshots.take(service, "f", "f.snap.x")
    assert snapshots.flatten(service, "f") == "started"
    for _ in range(100):
        if snapshots.flatten_progress(service, "f") is None:
            break
        subprocess.run(["sleep", "0.05"], check=True)
    assert service.pool.info("f").backing is None
    assert holds(nbd_io(e, certs, "read -P 0x33 0 1M"))


def test_a_failed_snapshot_leaves_the_volume_as_it_was(service: VolumeService) -> None:
    with pytest.raises(VolumeError, match="no volume"):
        snapshots.take(service, "nope", "nope.snap.a")
    service.create("z", MiB)
    service.create("z.snap.a", MiB)  # the name is taken
    with pytest.raises(VolumeError, match="already exists"):
        snapshots.take(service, "z", "z.snap.a")
    assert service.pool.info("z").backing is None


def test_the_converger_takes_a_wanted_snapshot_once_and_drops_what_the_manager_deletes(
        service: VolumeService, certs: Path) -> None:
    conv = VolumeConverger(service)
    base = DesiredVolume(name="b", size_bytes=2 * MiB, allowed=["h1"])
    done, errors = conv.converge([base])
    assert errors == [] and done == ["volume.create b", "volume.export b"]
    nbd_io(service.exports.describe("b"), certs, "write -P 0x5a 0 1M")
    snap = DesiredVolume(name="b.snap.one", size_bytes=2 * MiB, snapshot_of="b")
    clone = DesiredVolume(name="c1", size_bytes=2 * MiB, backing="b.snap.one")
    done, errors = conv.converge([base, snap, clone])
    assert errors == [] and done == ["volume.snapshot b.snap.one", "volume.create c1"]
    assert conv.converge([base, snap, clone]) == ([], [])  # taken once
    assert holds(file_io(service.pool.path("c1"), "read -P 0x5a 0 1M"))
    drop = [DesiredVolume(name=n, size_bytes=2 * MiB, drop=True) for n in ("b", "b.snap.one", "c1")]
    done, errors = conv.converge(drop)
    assert "volume.unexport b" in done and "volume.delete c1" in done and "volume.delete b" in done
    conv.converge(drop)  # the snapshot after what it backed
    assert service.volumes() == [] and service.exports.names() == [] and conv.managed == {}


@given(st.sampled_from(["x", "x.snap.s"]), st.booleans(), st.booleans(), st.booleans())
def test_actions_drop_everything_of_a_dropped_volume_and_snapshot_only_what_is_missing(
        name: str, drop: bool, held: bool, exported: bool) -> None:
    have = {name: ({"allowed": ["h1"]} if exported else {})} if held else {}
    w = DesiredVolume(name=name, size_bytes=MiB, drop=drop, snapshot_of="x" if name != "x" else None)
    out = snapshots.actions(w, have, lambda op, n, args: op)
    if drop:
        assert out is not None and out[-1] == "forget" and ("delete" in out) == held
        assert ("unexport" in out) == (held and exported)
    elif name != "x" and not held:
        assert out == ["snapshot"]
    else:
        assert out is None


def test_an_encrypted_volume_is_not_snapshotted(service: VolumeService) -> None:
    path = service.pool.path("sec")
    service.create("sec", MiB, key="ab" * 32)  # crypt.py's create: tried again when a busy host fails the PBKDF timing
    service.pool.create("plain", MiB)
    assert snapshots.encrypted(path) and not snapshots.encrypted(service.pool.path("plain"))
    with pytest.raises(VolumeError, match="encrypted"):
        snapshots.take(service, "sec", "sec.snap.a")
    assert not service.pool.exists("sec.snap.a")
