"""Three real etcd members: one killed, writes go on through the others; restarted, it catches up."""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from softudc.etcd.client import EtcdClient, EtcdError
from softudc.etcd.cluster import EtcdCluster, cleanup, free_port_pairs


def test_three_members_survive_one_killed_and_it_catches_up(tmp_path: Path) -> None:
    cluster = EtcdCluster.start(tmp_path / "etcd", members=3)
    client = cluster.client(timeout=3)
    try:
        assert len(client.members()) == 3 and all(row["ok"] for row in client.status())
        assert cluster.url.startswith("etcd://127.0.0.1:") and cluster.url.count(",") == 2
        client.put(b"/k/before", b"1")
        pid = cluster.pids["etcd0"]
        cluster.kill(0)
        assert not Path(f"/proc/{pid}").exists() and "etcd0" not in cluster.pids
        deadline = time.monotonic() + 30
        while True:  # a new leader within the election timeout if etcd0 led
            try:
                rev = client.put(b"/k/after", b"2")
                break
            except EtcdError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert not client.status()[0]["ok"]
        cluster.restart(0)
        only0 = EtcdClient(cluster.endpoints[:1], timeout=3)
        try:
            deadline = time.monotonic() + 30
            while only0.range(b"/k/after")[0] < rev and time.monotonic() < deadline:
                time.sleep(0.1)
            assert only0.get(b"/k/after").value == b"2"  # type: ignore[union-attr]
            assert only0.get(b"/k/before").value == b"1"  # type: ignore[union-attr]
        finally:
            only0.close()
    finally:
        client.close()
        cluster.stop()
    assert cluster.pids == {} and (tmp_path / "etcd" / "etcd0.log").stat().st_size > 0


def test_cleanup_kills_what_a_crashed_run_left(tmp_path: Path) -> None:
    cluster = EtcdCluster.start(tmp_path / "etcd", members=1)
    try:
        pid = cluster.pids["etcd0"]
        assert cleanup(tmp_path / "etcd") == [pid]
        cluster.members[0].process.wait(10)  # type: ignore[union-attr]
        assert cleanup(tmp_path / "etcd") == []
    finally:
        cluster.stop()


def test_a_member_that_cannot_start_says_where_its_log_is(tmp_path: Path) -> None:
    with pytest.raises(EtcdError, match=r"exited(.|\n)*etcd0\.log"):
        EtcdCluster.start(tmp_path / "etcd", members=1, host="192.0.2.1", ports=[(2379, 2380)], timeout=20)
    assert os.listdir(tmp_path / "etcd")


def test_a_cluster_all_down_comes_back_when_its_members_restart_together(tmp_path: Path) -> None:
    cluster = EtcdCluster.start(tmp_path / "etcd", members=3)
    try:
        client = cluster.client(timeout=3)
        rev = client.put(b"/k", b"kept")
        client.close()
        for i in range(3):
            cluster.kill(i)
        with ThreadPoolExecutor(3) as pool:  # one alone would wait for a quorum that never comes
            list(pool.map(cluster.restart, range(3)))
        assert sorted(cluster.pids) == ["etcd0", "etcd1", "etcd2"]
        assert json.loads((tmp_path / "etcd" / "pids.json").read_text()) == cluster.pids
        client = cluster.client(timeout=3)
        kv = client.get(b"/k")
        client.close()
        assert kv is not None and kv.value == b"kept" and kv.mod_revision == rev
    finally:
        cluster.stop()


class _Draws:
    """A SystemRandom stand-in that draws the given ports in order."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = iter(ports)

    def randint(self, low: int, high: int) -> int:
        return next(self.ports)


def test_one_start_never_gives_two_members_the_same_port(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = _Draws([24001, 24001, 24002, 24001, 24002, 24003, 24001, 24004])  # a repeat is drawn again
    monkeypatch.setattr(random, "SystemRandom", lambda: draws)
    assert free_port_pairs(["127.0.0.1"] * 2) == [(24001, 24002), (24003, 24004)]
