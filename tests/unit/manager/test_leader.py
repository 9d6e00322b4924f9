"""Leadership of a group of managers, both kinds: one leader of three; a leader killed (closed
without resigning) is followed by another within the TTL and a poll; a resignation hands over at
once; a leader cut from etcd steps down before its lease can expire; followers read the leader's
published `reconciled`; members are listed. Managers in roles: a migration or an apply under way
when the leader dies is completed by the next leader; a follower's long poll wakes on the leader's
pass."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from softudc.etcd.client import EtcdClient, EtcdError
from softudc.etcd.cluster import EtcdCluster
from softudc.manager.etcdleader import EtcdLeadership
from softudc.manager.etcdstore import EtcdStore
from softudc.manager.leader import (
    FILE_PUBLISH_GAP_S,
    FILE_RETRY_S,
    FileLeadership,
    LeaderInfo,
    SoloLeadership,
)
from softudc.manager.service import Manager, init
from softudc.manager.store import NotLeader, SqliteStore
from tests.unit.manager.test_controller_one_vm import ADMIN, DEMO, HOSTS, instances, placed, report

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
        # Generous bounds: this is about who wins, not how fast (CI under load took over 5 s here once).
        assert wait_until(lambda: group.members["b"].is_leader(), TTL * 4) >= 0
        assert not old._write_info(LeaderInfo("a", "", 0, 1, 99))  # its compare fails: b's key stays
        info = group.members["b"].leader()
        assert info is not None and info.id == "b"
        wait_until(lambda: not old.is_leader(), TTL * 4)  # and it notices
    finally:
        group.close()
        client.close()


def test_a_stale_leaders_pass_writes_nothing_once_another_leads(etcd_cluster: EtcdCluster,
                                                                  etcd_prefix: str) -> None:
    """Fencing: the controllers' writes compare the leader key's create revision, so a pass that
    began while `a` led writes nothing once `b` leads, however late a's watchdog notices."""
    client = EtcdClient(etcd_cluster.endpoints, timeout=1.0)
    store = EtcdStore(client, etcd_prefix)
    group = Group(lambda name: EtcdLeadership(client, etcd_prefix, name, ttl=TTL))
    try:
        store.put("farm", "shop", {})
        old = group.add("a")
        group.one_leader()
        with old.fence(store):  # a pass begins while a leads
            store.set_status("farm", "shop", {"by": "a"})
            client.lease_revoke(old._lease)  # a's lease runs out mid-pass
            group.add("b")
            assert wait_until(lambda: group.members["b"].is_leader(), TTL + 2) >= 0
            with pytest.raises(NotLeader):
                store.set_status("farm", "shop", {"by": "a, too late"})
        got = store.get("farm", "shop")
        assert got is not None and got.status == {"by": "a"}
        assert SoloLeadership("s").fence(store).__enter__() is None  # nothing to fence alone
    finally:
        group.close()
        store.close()
        client.close()


def test_solo_leads_from_its_start() -> None:
    seen = Seen()
    solo = SoloLeadership("m", "https://m:8443")
    solo.start(seen.elected, seen.deposed)
    assert solo.is_leader() and seen.terms == [1]
    solo.publish(7)
    info = solo.leader()
    assert info is not None and info.reconciled == 7 and [m["id"] for m in solo.members()] == ["m"]


class TakingOver(SoloLeadership):
    """A manager that takes over between the two reads of a status: not leading when asked, and
    no record yet (the old leader's key is gone) when its record is read; leading from then on."""

    def __init__(self) -> None:
        super().__init__("m")
        self.taken = False

    def is_leader(self) -> bool:
        return self.taken

    def leader(self) -> LeaderInfo | None:
        self.taken = True
        return None


def test_a_status_taken_during_a_takeover_never_says_leader_without_the_leaders_record(tmp_path: Path) -> None:
    """The e2e ha test once read role "leader" with "leader": null (the record was read in the gap,
    the role after the takeover): a status is one consistent snapshot."""
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path, manager_id="m", leadership=TakingOver())
    try:
        s = m.manager_status()
        assert s["role"] == "follower" and s["leader"] is None and s["lag"] is None
    finally:
        m.store.close()


def test_a_file_leader_publishes_reconciled_coalesced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write of the info file is synced: a loop marking revisions many times a second has it
    written at most every FILE_PUBLISH_GAP_S, the latest value last."""
    a = FileLeadership(tmp_path / "state.db", "a")
    a.start(Seen().elected, Seen().deposed)
    wait_until(a.is_leader, 3)
    writes: list[int] = []
    real = a._write_info

    def counted(info: LeaderInfo) -> bool:
        written = real(info)
        writes.append(info.reconciled)  # once on disk: the file is read below
        return written

    monkeypatch.setattr(a, "_write_info", counted)
    t0 = time.monotonic()
    for revision in range(1, 101):  # 100 marks in about a second
        a.publish(revision)
        time.sleep(0.01)
    wait_until(lambda: bool(writes) and writes[-1] == 100, 3)  # the latest value is written
    spent = time.monotonic() - t0
    assert len(writes) <= spent / FILE_PUBLISH_GAP_S + 2, f"{len(writes)} writes in {spent:.1f} s"
    info = LeaderInfo.load(a.info_path.read_bytes())
    assert info is not None and info.reconciled == 100
    a.resign()


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
    assert b.leader() is None
    c = FileLeadership(tmp_path / "state.db", "c")
    terms: list[int] = []
    c.start(lambda term, gap: terms.append(term), lambda reason: None)
    wait_until(lambda: bool(terms), 3)
    c.resign()
    assert terms == [3]  # the count goes on across resignations


# --- the Manager in roles: what a leader left half done, the next one completes -------------------

@pytest.fixture(params=["sqlite", "etcd"])
def two_managers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Manager, Manager]]:
    """Managers a (leading) and b (following) on one store, each with its own connection to it, as
    two processes would have."""
    init(tmp_path, ["127.0.0.1"])
    made: list[Manager] = []

    def manager(name: str) -> Manager:
        if request.param == "sqlite":
            store: Any = SqliteStore(tmp_path / "state.db")
            lead: Any = FileLeadership(tmp_path / "state.db", name)
        else:
            cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
            prefix: str = request.getfixturevalue("etcd_prefix")
            store = EtcdStore(EtcdClient(cluster.endpoints), prefix, owns_client=True)
            lead = EtcdLeadership(EtcdClient(cluster.endpoints, timeout=1.0), prefix, name, ttl=TTL)
        made.append(Manager(tmp_path, store=store, manager_id=name, leadership=lead))
        made[-1].start()
        return made[-1]

    a = manager("a")
    wait_until(a.leadership.is_leader, 10)
    b = manager("b")
    for h in HOSTS:
        a.store.put("host", h, {"joined": time.time()})
    try:
        yield a, b
    finally:
        for m in made:
            m.close()
            m.store.close()


def _killed(a: Manager, b: Manager) -> float:
    """a dies without resigning (its loop stops, its lock or lease is dropped as by a crash); the
    seconds until b leads."""
    a.close(resign=False)
    return wait_until(b.leadership.is_leader, TTL + 3)


def test_a_migration_under_way_when_the_leader_dies_is_completed_by_the_next(
        two_managers: tuple[Manager, Manager]) -> None:
    a, b = two_managers
    where = placed(a)
    src = where["db-0"]
    dst = next(h for h in HOSTS if h != src)
    dst_vms = [f"demo--{n}" for n, h in where.items() if h == dst]
    without = [f"demo--{n}" for n, h in where.items() if h == src and n != "db-0"]
    b.migrate(ADMIN, "demo", "db-0", {"to": dst})  # asked of the follower: it stores, a's loop moves it
    report(a, dst, dst_vms, prepared=["demo--db-0"])
    assert instances(a)["db-0"]["migrating"]["state"] == "prepared"
    attempt = instances(a)["db-0"]["migrating"]["attempt"]
    took = _killed(a, b)
    report(b, src, without, migrations={"demo--db-0": {"attempt": attempt, "state": "completed"}})
    report(b, dst, [*dst_vms, "demo--db-0"])
    db = instances(b)["db-0"]
    assert db["host"] == dst and "migrating" not in db
    assert [e for e in b.store.events("farm", "demo") if e["type"] == "Migrated"]
    types = [(e["name"], e["type"]) for e in b.store.events("manager")]
    assert ("a", "Leader") in types and ("b", "Leader") in types
    assert b.registry.get_sample_value("softudc_manager_leader") == 1
    assert b.registry.get_sample_value("softudc_manager_leader_changes_total") == 1
    gap = b.registry.get_sample_value("softudc_manager_leaderless_seconds")
    assert gap is not None and 0 < gap <= took + 1.5
    print(f"\n{type(b.leadership).__name__}: b led {took:.2f} s after a died mid-migration")


def test_an_apply_under_way_when_the_leader_dies_is_completed_by_the_next(
        two_managers: tuple[Manager, Manager]) -> None:
    a, b = two_managers
    for h in HOSTS:
        report(a, h)
    a.put_farm(ADMIN, "demo", DEMO, None)  # planned by a; no host runs anything yet
    assert not a.store.get("farm", "demo").status["conditions"]["Ready"]  # type: ignore[union-attr]
    a.close(resign=False)
    # Applied while nobody leads: stored at once, planned once b leads; the answer waits for that.
    answer = b.put_farm(ADMIN, "other", DEMO.replace("name: demo", "name: other"), None)
    assert b.leadership.is_leader() and len(answer["status"]["instances"]) == 4
    where = {i["name"]: i["host"] for i in instances(b).values()}
    others = {i["name"]: i["host"] for i in instances(b, "other").values()}
    for h in HOSTS:
        report(b, h, [f"demo--{n}" for n, at in where.items() if at == h]
               + [f"other--{n}" for n, at in others.items() if at == h])
    for farm in ("demo", "other"):
        assert b.store.get("farm", farm).status["conditions"]["Ready"]  # type: ignore[union-attr]


def test_a_followers_long_poll_wakes_when_the_leaders_pass_moves_its_host(
        two_managers: tuple[Manager, Manager]) -> None:
    a, b = two_managers
    for h in HOSTS:
        report(a, h)
    before = b.desired("h1", "h1")
    woke: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: woke.append(asyncio.run(b.wait_desired("h1", "h1", before["etag"], 20))))
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    a.put_farm(ADMIN, "demo", DEMO, None)  # a's pass places VMs, some on h1 (3 hosts, 4 VMs)
    t.join(25)
    assert woke and woke[0]["etag"] != before["etag"] and woke[0]["vms"]
    assert time.monotonic() - t0 < 5  # the follower's watch, not the poll's timeout


def test_a_manager_cut_from_etcd_stops_its_controllers_and_says_so(tmp_path: Path, etcd_cluster: EtcdCluster,
                                                                   etcd_prefix: str) -> None:
    init(tmp_path, ["127.0.0.1"])
    cut = CutClient(etcd_cluster.endpoints, timeout=1.0)
    m = Manager(tmp_path, store=EtcdStore(EtcdClient(etcd_cluster.endpoints), etcd_prefix, owns_client=True),
                manager_id="a", leadership=EtcdLeadership(cut, etcd_prefix, "a", ttl=TTL))
    try:
        m.start()
        wait_until(lambda: m.controllers.running(), 10)
        cut.cut = True  # its leadership's connection only: the store still answers (a partial partition)
        took = wait_until(lambda: not m.controllers.running(), TTL)
        assert took < TTL - 0.5 and m.registry.get_sample_value("softudc_manager_leader") == 0
        wait_until(lambda: any(e["type"] == "SteppedDown" for e in m.store.events("manager", "a")), 3)
        assert m.observer._thread is not None and m.observer._thread.is_alive()  # a follower now
    finally:
        cut.cut = False
        m.close()
        m.store.close()
        cut.close()


def test_settles_racing_with_the_election_leave_one_controller_loop(tmp_path: Path) -> None:
    init(tmp_path, ["127.0.0.1"])
    def loops() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "softudc-controllers"}

    others = loops()  # other tests' managers, not closed
    m = Manager(tmp_path, manager_id="a", leadership=FileLeadership(tmp_path / "state.db", "a"))
    try:
        settles = [threading.Thread(target=m.settle, args=(5,)) for _ in range(8)]
        for t in settles:
            t.start()
        for t in settles:
            t.join(10)
        assert m.leadership.is_leader() and m.controllers.running()
        assert len(loops() - others) == 1
    finally:
        m.close()
    assert not loops() - others


def test_a_leader_whose_key_is_deleted_steps_down_and_one_is_elected_again(etcd_cluster: EtcdCluster,
                                                                           etcd_prefix: str) -> None:
    client = EtcdClient(etcd_cluster.endpoints, timeout=1.0)
    group = Group(lambda name: EtcdLeadership(client, etcd_prefix, name, ttl=TTL))
    try:
        group.add("a")
        group.add("b")
        first = group.one_leader()
        client.delete(f"{etcd_prefix}/leader".encode())  # by hand (etcdctl del), not by its lease
        wait_until(lambda: bool(group.seen[first].reasons), 3)
        assert "deleted or is another manager's" in group.seen[first].reasons[0]
        group.one_leader(timeout=TTL + 2)  # one, not two
        time.sleep(1)
        assert len(group.leaders()) == 1
    finally:
        group.close()
        client.close()
