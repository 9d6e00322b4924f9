"""Leadership of a group of managers, both kinds: one leader of three; a leader killed (closed
without resigning) is followed by another within the TTL and a poll; a resignation hands over at
once; a leader cut from etcd steps down before its lease can expire; followers read the leader's
published `reconciled`; members are listed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from softudc.etcd.client import EtcdClient, EtcdError
from softudc.etcd.cluster import EtcdCluster
from softudc.manager.leader import FILE_RETRY_S, EtcdLeadership, FileLeadership, LeaderInfo, SoloLeadership

TTL = 3
Made = Callable[[str], "FileLeadership | EtcdLeadership"]


def wait_until(cond: Callable[[], bool], timeout: float) -> float:
    """Seconds it took `cond` to hold; fails after `timeout`."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"not within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - t0


class Seen:
    """A leadership's callbacks, recorded."""

    def __init__(self) -> None:
        self.terms: list[int] = []
        self.gaps: list[float] = []
        self.reasons: list[str] = []

    def elected(self, term: int, gap: float) -> None:
        self.terms.append(term)
        self.gaps.append(gap)

    def deposed(self, reason: str) -> None:
        self.reasons.append(reason)


class Group:
    """Leaderships of one group, each with its Seen; all closed at the end."""

    def __init__(self, make: Made) -> None:
        self.make = make
        self.members: dict[str, Any] = {}
        self.seen: dict[str, Seen] = {}

    def add(self, name: str) -> Any:
        lead = self.members[name] = self.make(name)
        self.seen[name] = Seen()
        lead.start(self.seen[name].elected, self.seen[name].deposed)
        return lead

    def leaders(self) -> list[str]:
        return [n for n, m in self.members.items() if m.is_leader()]

    def one_leader(self, timeout: float = 10.0) -> str:
        wait_until(lambda: len(self.leaders()) == 1, timeout)
        return self.leaders()[0]

    def close(self) -> None:
        for m in self.members.values():
            m.close()


@pytest.fixture(params=["sqlite", "etcd"])
def group(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Group]:
    clients: list[EtcdClient] = []
    if request.param == "sqlite":
        def make(name: str) -> Any:
            return FileLeadership(tmp_path / "state.db", name, f"https://{name}:8443")
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
        prefix: str = request.getfixturevalue("etcd_prefix")

        def make(name: str) -> Any:
            clients.append(EtcdClient(cluster.endpoints, timeout=1.0))
            return EtcdLeadership(clients[-1], prefix, name, f"https://{name}:8443", ttl=TTL)
    g = Group(make)
    try:
        yield g
    finally:
        g.close()
        for c in clients:
            c.close()


def handover_bound(lead: Any) -> float:
    """How soon another manager must lead after this one died: the lock is free at once (a try
    every FILE_RETRY_S); a lease runs out after its TTL (then a follower's watch sees it)."""
    return FILE_RETRY_S + 1.0 if isinstance(lead, FileLeadership) else TTL + 1.5


def test_one_leader_of_three_and_it_says_who_it_is(group: Group) -> None:
    for name in ("a", "b", "c"):
        group.add(name)
    leader = group.one_leader()
    time.sleep(1.0)
    assert group.leaders() == [leader]  # and it stays one
    assert group.seen[leader].terms and all(not group.seen[n].terms for n in group.members if n != leader)
    for m in group.members.values():
        info = m.leader()
        assert info is not None and info.id == leader and info.url == f"https://{leader}:8443"
    wait_until(lambda: {m["id"] for m in group.members[leader].members()} == {"a", "b", "c"}, 5)


def test_the_leaders_reconciled_reaches_the_followers(group: Group) -> None:
    for name in ("a", "b"):
        group.add(name)
    leader = group.one_leader()
    follower = next(n for n in group.members if n != leader)
    group.members[leader].publish(41)
    group.members[leader].publish(42)
    wait_until(lambda: (i := group.members[follower].leader()) is not None and i.reconciled == 42, 3)


def test_a_leader_killed_is_followed_by_another_within_the_ttl_and_a_poll(group: Group) -> None:
    for name in ("a", "b", "c"):
        group.add(name)
    first = group.one_leader()
    term = group.seen[first].terms[-1]
    group.members[first].close()  # as a crash: no resignation
    t0 = time.monotonic()
    second = group.one_leader(timeout=handover_bound(group.members[first]) + 2)
    took = time.monotonic() - t0
    assert second != first and took < handover_bound(group.members[first])
    assert group.seen[second].terms == [term + 1]
    assert group.seen[second].gaps[0] >= 0
    print(f"\n{type(group.members[first]).__name__}: a killed leader was followed after {took:.2f} s")


def test_a_resignation_hands_over_at_once(group: Group) -> None:
    for name in ("a", "b"):
        group.add(name)
    first = group.one_leader()
    group.members[first].resign()
    assert group.seen[first].reasons == ["it resigned (a planned stop)"]
    took = wait_until(lambda: len(group.leaders()) == 1, 3)
    assert group.leaders() != [first] and took < 1.5
    print(f"\n{type(group.members[first]).__name__}: a resignation handed over in {took:.2f} s")


class CutClient(EtcdClient):
    """A client that can be cut from etcd: every call then hangs until its timeout and fails."""

    cut = False

    def _post(self, path: str, body: dict[str, Any], safe: bool) -> dict[str, Any]:
        if self.cut:
            time.sleep(self.timeout)
            raise EtcdError(f"cut from etcd (test) during {path}")
        return super()._post(path, body, safe)


def test_a_leader_cut_from_etcd_steps_down_before_its_lease_can_expire(etcd_cluster: EtcdCluster,
                                                                        etcd_prefix: str) -> None:
    cut = CutClient(etcd_cluster.endpoints, timeout=1.0)
    other_client = EtcdClient(etcd_cluster.endpoints, timeout=1.0)
    group = Group(lambda name: EtcdLeadership(cut if name == "a" else other_client, etcd_prefix, name, ttl=TTL))
    try:
        group.add("a")
        assert group.one_leader() == "a"
        group.add("b")
        time.sleep(0.5)
        cut.cut = True
        t0 = time.monotonic()
        wait_until(lambda: bool(group.seen["a"].reasons), TTL)  # the watchdog called back
        stepped_down = time.monotonic() - t0
        assert stepped_down < TTL - 0.5, "it must stop before its lease (TTL s after its last renewal) ends"
        assert "could not renew" in group.seen["a"].reasons[0]
        assert group.one_leader(timeout=TTL + 2) == "b"  # once the lease ran out
        print(f"\ncut from etcd: stepped down after {stepped_down:.2f} s, b led after {time.monotonic() - t0:.2f} s")
        assert not group.members["a"].is_leader()
    finally:
        cut.cut = False
        group.close()
        cut.close()
        other_client.close()


def test_a_stale_leader_cannot_overwrite_the_new_leaders_key(etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    client = EtcdClient(etcd_cluster.endpoints, timeout=1.0)
    group = Group(lambda name: EtcdLeadership(client, etcd_prefix, name, ttl=TTL))
    try:
        old = group.add("a")
        group.one_leader()
        client.lease_revoke(old._lease)  # its key is gone behind its back (a lease that ran out)
        group.add("b")
        assert wait_until(lambda: group.members["b"].is_leader(), TTL + 2) >= 0
        assert not old._write_info(LeaderInfo("a", "", 0, 1, 99))  # its compare fails: b's key stays
        info = group.members["b"].leader()
        assert info is not None and info.id == "b"
        wait_until(lambda: not old.is_leader(), TTL + 1)  # and it notices
    finally:
        group.close()
        client.close()


def test_solo_leads_from_its_start() -> None:
    seen = Seen()
    solo = SoloLeadership("m", "https://m:8443")
    solo.start(seen.elected, seen.deposed)
    assert solo.is_leader() and seen.terms == [1]
    solo.publish(7)
    info = solo.leader()
    assert info is not None and info.reconciled == 7 and [m["id"] for m in solo.members()] == ["m"]


def test_a_file_leader_crashed_leaves_no_leader_behind(tmp_path: Path) -> None:
    a = FileLeadership(tmp_path / "state.db", "a")
    seen = Seen()
    a.start(seen.elected, seen.deposed)
    wait_until(a.is_leader, 3)
    b = FileLeadership(tmp_path / "state.db", "b")
    assert b.leader() is not None
    a.close()
    assert b.leader() is None  # the info file stays, but nobody holds the lock
    done = threading.Event()
    b.start(lambda term, gap: done.set(), lambda reason: None)
    assert done.wait(3) and b.leader() is not None
    b.resign()
    assert not (tmp_path / "state.db.leader.json").exists()
