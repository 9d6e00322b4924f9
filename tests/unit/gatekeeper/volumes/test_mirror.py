"""Mirrored volumes against real qemu-storage-daemons: a quorum daemon over two NBD+TLS replicas,
one replica's daemon killed, I/O goes on, a third replica rebuilt in its place (real QEMU jobs)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.volumes.mirror import FAILED, HEALTHY, MirrorError, Mirrors, Replica, plan_rebuild
from gatekeeper.volumes.service import VolumeService
from softudc.pids import pid_alive

MiB = 1 << 20
VOL = "shop--db-0--data"


def qemu_io(mirrors: Mirrors, *commands: str) -> subprocess.CompletedProcess[str]:
    argv = ["qemu-io", "-f", "raw", f"nbd+unix:///{VOL}?socket={mirrors.socket_path(VOL)}"]
    for c in commands:
        argv += ["-c", c]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def replica(service: VolumeService, n: int) -> Replica:
    name = f"{VOL}.r{n}"
    service.create(name, 16 * MiB)
    e = service.export(name, ["h1"])
    return Replica(name, "h2", "127.0.0.1", int(e["port"]))


def same_data(service: VolumeService, a: str, b: str) -> bool:
    done = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", str(service.pool.path(a)),
                           str(service.pool.path(b))], capture_output=True, text=True, timeout=30, check=False)
    return done.returncode == 0


def rebuild(mirrors: Mirrors, replicas: list[Replica], timeout: float = 30.0) -> list[str]:
    done: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(d.startswith("mirror.rebuilt") for d in done):
        assert time.monotonic() < deadline, done
        done += mirrors.ensure(VOL, replicas)
        time.sleep(0.1)
    return done


@pytest.fixture
def mirrors(run_dir: Path, certs: Path) -> Iterator[Mirrors]:
    m = Mirrors(run_dir / "mirrors", certs / "h1")
    yield m
    for name in m.names():
        m.stop(name)


def test_writes_reach_both_replicas_survive_one_and_a_new_one_is_rebuilt(service: VolumeService,
                                                                         mirrors: Mirrors) -> None:
    r1, r2, r3 = replica(service, 1), replica(service, 2), replica(service, 3)
    assert mirrors.ensure(VOL, [r1, r2]) == [f"mirror.start {VOL}"]
    assert qemu_io(mirrors, "write -P 0xab 0 4M").returncode == 0
    assert same_data(service, r1.name, r2.name) and not same_data(service, r1.name, r3.name)
    assert mirrors.health(VOL)["replicas"] == {r1.name: HEALTHY, r2.name: HEALTHY}

    pid = service.exports.describe(r1.name)["pid"]
    os.kill(pid, signal.SIGKILL)  # r1's storage daemon dies (as with its host)
    while pid_alive(pid):
        time.sleep(0.02)
    io = qemu_io(mirrors, "read -P 0xab 0 4M", "write -P 0xcd 4M 4M", "read -P 0xcd 4M 4M")
    assert io.returncode == 0 and "Pattern verification failed" not in io.stdout, io.stdout + io.stderr
    assert mirrors.health(VOL)["replicas"] == {r1.name: FAILED, r2.name: HEALTHY}

    done = rebuild(mirrors, [r2, r3])
    assert f"mirror.rebuilt {VOL}: r3 replaced r1" in done, done
    assert mirrors.health(VOL) == {"replicas": {r3.name: HEALTHY, r2.name: HEALTHY}}
    assert qemu_io(mirrors, "write -P 0xef 8M 1M").returncode == 0
    assert same_data(service, r2.name, r3.name)
    assert mirrors.ensure(VOL, [r2, r3]) == []  # nothing left to do
    io = qemu_io(mirrors, "read -P 0xab 0 4M", "read -P 0xcd 4M 4M", "read -P 0xef 8M 1M")
    assert "Pattern verification failed" not in io.stdout, io.stdout

    qsd = mirrors.daemon(VOL).pid()
    mirrors.stop(VOL)
    assert mirrors.names() == [] and qsd is not None and not pid_alive(qsd)


def test_reads_through_a_mirror_are_not_held_by_delayed_acks(service: VolumeService, mirrors: Mirrors) -> None:
    """Each 4 KiB read took >= 40 ms (two Nagle waits on the replica export's replies: the block
    status the quorum asks, then the read) while the export's qsd had no TCP_NODELAY; now < 1 ms."""
    mirrors.ensure(VOL, [replica(service, 1), replica(service, 2)])
    assert qemu_io(mirrors, "write -P 0xab 0 1M").returncode == 0
    started = time.monotonic()
    io = qemu_io(mirrors, *[f"read -P 0xab {i * 4096} 4k" for i in range(50)])
    took = time.monotonic() - started
    assert io.returncode == 0 and "Pattern verification failed" not in io.stdout, io.stdout + io.stderr
    assert took < 1.5, f"50 reads of 4 KiB took {took:.2f} s (>= 2 s when replies wait for delayed ACKs)"


def test_a_mirror_starts_with_two_replicas(mirrors: Mirrors) -> None:
    with pytest.raises(MirrorError, match="starts with two"):
        mirrors.ensure(VOL, [Replica(f"{VOL}.r1", "h2", "127.0.0.1", 1)])
    with pytest.raises(MirrorError, match=r"ends in \.r<N>"):
        _ = Replica(VOL, "h2", "127.0.0.1", 1).node


nodes = st.lists(st.sampled_from([f"r{i}" for i in range(1, 6)]), min_size=0, max_size=3, unique=True)


@given(children=nodes, wanted=nodes)
def test_plan_rebuild_replaces_an_unwanted_child_by_a_new_replica(children: list[str], wanted: list[str]) -> None:
    want = {n: Replica(f"v.{n}", "h", "127.0.0.1", 1) for n in wanted}
    plan = plan_rebuild(children, want)
    if plan is None:
        assert set(children) <= set(want) or set(want) <= set(children)
    else:
        old, new = plan
        assert old in children and old not in want and new in want and new not in children
