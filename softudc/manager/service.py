"""The manager's service, independent of HTTP (`api` maps routes onto it): the Manager composes
its jobs, each in its own module, and keeps the method names the API calls.

    farmops.py   farms: list, get, apply, delete, plan; the event log
    hosts.py     hosts: join, authenticate, reports, states an admin sets, removal
    moves.py     moving an instance to another host (admission, cancel)
    keys.py      VNET keys: made and rotated by the controllers, rotated on demand
    planning.py  the controllers' reconcile pass over every farm
    loop.py      the controllers' loop: a thread driven by the store's watch and a timer
    leader.py    which manager of a group runs that loop (SQLite flock, etcd lease)
    longpoll.py  each host's desired state, cached per generation, and the long polls

Requests store and return; the controller loop plans (never inside a request). An apply waits,
bounded, for the loop to have planned it, so its answer carries the status as before.

Roles (docs/ha.md): every manager serves the whole API; only the group's leader runs the controller
loop. A follower runs a StoreObserver (its long polls wake when the leader's pass changes a host's
desired state) and its `settle()` waits for the revision the leader publishes as reconciled.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from softudc.atomicfile import create_exclusive, private_dir, write_atomic
from softudc.manager import volume_moves, volume_objects
from softudc.manager.auth import TokenStore
from softudc.manager.desired import DesiredInputs
from softudc.manager.errors import ApiError as ApiError  # raised by the API's operations; importers find it here
from softudc.manager.etcdleader import EtcdLeadership
from softudc.manager.farmops import FarmOps
from softudc.manager.farms import FARMS, FarmCache
from softudc.manager.hosts import HOST_STATES as HOST_STATES  # importers find it here
from softudc.manager.hosts import Hosts
from softudc.manager.keys import Keys
from softudc.manager.leader import LeaderInfo, Leadership, SoloLeadership
from softudc.manager.load import LoadCollector
from softudc.manager.longpoll import MAX_WAIT_S as MAX_WAIT_S  # the longest long poll; importers find it here
from softudc.manager.longpoll import LongPolls
from softudc.manager.loop import RECONCILE_EVERY_S as RECONCILE_EVERY_S  # importers find it here
from softudc.manager.loop import ControllerLoop, Pass, StoreObserver
from softudc.manager.metrics import LeaderMetrics, make_registry, request_latency
from softudc.manager.moves import Moves
from softudc.manager.planning import Planning
from softudc.manager.planning import _check_vnet_ids as _check_vnet_ids  # tests reach it here
from softudc.manager.planning import _vnet_ids as _vnet_ids
from softudc.manager.store import SqliteStore, Store
from softudc.manager.usage import MeteredLoadView, UsageBook, UsageCollector
from softudc.manager.volume_keys import VolumeKeys
from softudc.pki import CertificateAuthority

log = logging.getLogger("softudc.manager")


class Manager(Keys, Planning, FarmOps, Hosts, Moves):
    """The manager's state and the API's operations, independent of HTTP. Its leadership starts
    with the first call that needs it, or `start()`; while this manager leads, the controller loop
    (one thread, "softudc-controllers") runs. Without a `leadership` it leads alone (one manager).
    `close()` stops both and resigns (`resign=False`: as a crash would, for tests)."""

    def __init__(self, state_dir: Path, store: Store | None = None, *, manager_id: str | None = None,
                 leadership: Leadership | None = None) -> None:
        self.state_dir = private_dir(state_dir)  # 0700 even when an older version made it 0755
        self.store: Store = store if store is not None else SqliteStore(state_dir / "state.db")
        self.volume_keys = VolumeKeys(self.store)  # encrypted volumes' keys (issue 13)
        self.manager_id = manager_id or f"{socket.gethostname()}-{os.getpid()}"
        self.leadership: Leadership = leadership or SoloLeadership(self.manager_id)
        self.tokens = TokenStore(state_dir / "tokens.json")
        self.ca = CertificateAuthority.load(state_dir / "pki")
        self._reconcile_lock = threading.RLock()
        self.farms: FarmCache = FARMS  # validated descriptors, parsed once per text (audit R11)
        # Desired state per host, cached per reconcile generation; long polls wake only when their
        # host's etag moved (audit R11).
        self.polls = LongPolls(lambda host: self._polled(host), lambda hosts: self._polled_many(hosts))
        self._inputs: tuple[tuple[int, int], DesiredInputs] | None = None  # see _generation_inputs
        self._passes_done = 0
        self._inputs_lock = threading.Lock()
        self.controllers = self._new_controllers()  # started when this manager is elected
        self.observer = StoreObserver(self.store, self.polls.new_generation)  # runs while it follows
        self._role_lock = threading.Lock()
        self._started = self._closed = False
        self._compacted_at = 0.0
        self.registry, self.requests, self.events = make_registry(self.store, self.reports, self.polls.waiting,
                                                                  images=state_dir / "images")  # softudc image's
        self.latency = request_latency(self.registry)
        self.registry.register(LoadCollector(self.store, lambda: self.load_view))
        # Usage accounting (issue 15): the load view hands each report's usage to the usage book.
        self.usage = UsageBook(self.store, self.manager_id)
        self.__dict__["_load_view"] = MeteredLoadView(self.store, self.manager_id, self.usage)
        self.registry.register(UsageCollector(self.store, lambda: self.usage))
        self.leader_metrics = LeaderMetrics(self.registry)
        self._addresses: dict[str, str] = {}  # host -> where its reports come from (migration URIs, R20)

    def _new_controllers(self) -> ControllerLoop:
        # The loop marks a pass done (an apply waiting for it answers) before it lets long polls go;
        # it asks the leadership before each pass and publishes what it has reconciled.
        return ControllerLoop(self.store, self._fenced_pass, RECONCILE_EVERY_S,
                              after=self.polls.new_generation, may_run=self.leadership.is_leader,
                              on_mark=self.leadership.publish)

    def _fenced_pass(self) -> Pass:
        """One controllers' pass whose writes the store refuses once another manager leads (etcd:
        NotLeader, the pass ends there; the loop's next question to the leadership stops it)."""
        with self.leadership.fence(self.store):
            return self.reconcile(wake=False)

    def start(self) -> None:
        """Join the group (once; every call that stores something for the controllers calls this):
        the leadership campaigns, the follower's watch runs until this manager is elected."""
        with self._role_lock:
            if self._started or self._closed:
                return
            self._started = True
            if not isinstance(self.leadership, SoloLeadership):
                self.observer.start()
        self.leadership.start(self._elected, self._deposed)

    def _elected(self, term: int, leaderless_s: float) -> None:
        with self._role_lock:
            if self._closed:
                return
            self.observer.stop(timeout=0)
            if self.controllers.spent():  # elected again: a stopped loop does not start again
                self.controllers = self._new_controllers()
            self.controllers.start()  # (a settle() racing with the election may have started it: once)
        self.leader_metrics.elected(leaderless_s)
        if not isinstance(self.leadership, SoloLeadership):
            self._event_safely("Leader", f"{self.manager_id} became leader (term {term}, after {leaderless_s:.1f} s "
                                         "without one)")

    def _deposed(self, reason: str) -> None:
        self.controllers.stop(timeout=0)  # a pass in progress finishes; the loop asks before the next
        self.leader_metrics.deposed()
        with self._role_lock:
            if not self._closed:
                self.observer = StoreObserver(self.store, self.polls.new_generation)
                self.observer.start()
        self._event_safely("SteppedDown", f"{self.manager_id} stepped down: {reason}")

    def _event_safely(self, type_: str, message: str) -> None:
        """A leadership event; the store may be what failed (a leader cut from etcd): logged then."""
        try:
            self._event("manager", self.manager_id, type_, message)
        except Exception as e:
            log.warning("%s (not recorded as an event: %s)", message, e)

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until the controller loop has looked at everything stored before this call (and
        planned what was news); False after `timeout`. An apply's answer and tests use it. On a
        follower: until the leader has published a `reconciled` at least the store's revision."""
        self.start()
        target, deadline = self.store.revision(), time.monotonic() + timeout
        while not self._closed:
            loop = self.controllers  # never started here: only an election starts a loop
            if self.leadership.is_leader() and loop.running():
                return loop.settle(max(deadline - time.monotonic(), 0.0))
            info = self._leader_info()
            if info is not None and info.reconciled >= target:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return False

    def _leader_info(self) -> LeaderInfo | None:
        try:
            return self.leadership.leader()
        except Exception as e:  # etcd unreachable: no leader known from here
            log.warning("cannot read the leader's record: %s", e)
            return None

    def close(self, resign: bool = True) -> None:
        """Stop the controller loop (within a second when it is idle) and the follower's watch,
        then leave the group: resign (another manager leads at once) or, `resign=False`, drop the
        leadership as a crash would (tests of fail-over)."""
        with self._role_lock:
            self._closed = True
        self.controllers.stop()
        self.observer.stop()
        if resign:
            self.leadership.resign()
        else:
            self.leadership.close()
        if resign:  # a clean stop loses no heartbeat (a crash loses the last second's)
            self.close_hosts()

    def manager_status(self) -> dict[str, Any]:
        """`softudc manager status`: this manager and its role, the leader, the members seen, the
        store's health and the lag (the store's revision less the leader's published reconciled)."""
        leading = self.leadership.is_leader()  # before the record: a manager taking over meanwhile
        info = self._leader_info()  # then reads its own record, never the gap before it
        leading = leading and info is not None and info.id == self.leadership.id
        revision = self.store.revision()
        try:
            members = self.leadership.members()
        except Exception as e:
            log.warning("cannot list the managers: %s", e)
            members = []
        for member in members:
            member["role"] = "leader" if info is not None and member.get("id") == info.id else "follower"
        return {"id": self.manager_id, "url": self.leadership.url,
                "role": "leader" if leading else "follower",
                "leader": dataclasses.asdict(info) if info else None, "members": members,
                "store": self._store_health(), "revision": revision,
                "lag": max(revision - info.reconciled, 0) if info else None}

    def _store_health(self) -> dict[str, Any]:
        if isinstance(self.leadership, EtcdLeadership):
            rows = self.leadership.client.status()
            return {"backend": "etcd", "healthy": sum(r["ok"] for r in rows) * 2 > len(rows), "endpoints": rows}
        if isinstance(self.store, SqliteStore):
            files = [self.store.path + suffix for suffix in ("", "-wal")]
            return {"backend": "sqlite", "healthy": True, "path": self.store.path,
                    "size": sum(os.path.getsize(f) for f in files if os.path.exists(f))}
        return {"backend": type(self.store).__name__, "healthy": True}

    def _event(self, kind: str, name: str, type_: str, message: str) -> None:
        self.store.event(kind, name, type_, message)
        self.events.labels(type_).inc()

    def desired(self, peer_cn: str | None, name: str) -> dict[str, Any]:
        """What a gatekeeper should run now (mutual TLS only: its certificate names the host), with
        an `etag`; cached per reconcile generation. The long poll is `wait_desired`."""
        self._check_peer(peer_cn, name)
        self.start()  # the loop moves the generations this answer is cached by
        return self.polls.current(name)

    async def wait_desired(self, peer_cn: str | None, name: str, since: str, wait: float) -> dict[str, Any]:
        """The long poll: the host's desired state once its etag differs from `since`, or after
        `wait` seconds (at most MAX_WAIT_S). Awaits on the running event loop without holding a
        thread; the controllers wake it only when this host's etag moved."""
        self._check_peer(peer_cn, name)
        self.start()
        return await self.polls.wait_async(name, since, wait)

    def long_polls_waiting(self) -> int:
        return self.polls.waiting()

    @staticmethod
    def _check_peer(peer_cn: str | None, name: str) -> None:
        if peer_cn is None or peer_cn != name:
            raise ApiError(403, "gatekeeper routes need this host's client certificate from the manager's CA")

    @property
    def _waiting(self) -> dict[str, int]:
        return self.polls.waiting_hosts()

    def _changes_made(self, hosts: Iterable[str] | None = None) -> None:
        """A request stored a change for the controllers (a migration, say): the loop's watch sees
        it and reconciles; this only makes sure the loop runs. With `hosts`: wake their long polls."""
        if hosts is not None:
            self.polls.wake(list(hosts))
        self.start()

    def reconcile(self, wake: bool = True) -> Pass:
        """Planning's pass, counted (under the reconcile lock) for the long polls' inputs."""
        with self._reconcile_lock:
            done = super().reconcile(wake=False)
            self._passes_done += 1
        if wake:
            self.polls.new_generation()
        return done

    def _desired(self, name: str) -> dict[str, Any]:
        """`name`'s desired state as the store says now (tests; the long polls use `_polled`)."""
        return self._read_inputs().json(name)

    def _read_inputs(self) -> DesiredInputs:
        with self._reconcile_lock:  # one view of the farms: never a pass half written
            farms = [(f, o.status) for o in self.store.objects("farm") if (f := self.farms.for_hosts(o))]
            reports = self.reports()
            moves = volume_moves.records(self.store)
            objects = volume_objects.records(self.store)
        return DesiredInputs(farms, reports, self._vnet_keys, self.volume_keys, moves=moves, objects=objects)

    def _polled(self, name: str) -> dict[str, Any]:
        """A long poll's miss: `name`'s desired state from its generation's inputs."""
        return self._generation_inputs().json(name)

    def _polled_many(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """The desired state of each host in `names` (a new generation's waiting long polls)."""
        inputs = self._generation_inputs()
        return {name: inputs.json(name) for name in names}

    def _generation_inputs(self) -> DesiredInputs:
        """The farms, reports, VNET members and keys of the long polls' current generation, read
        once per generation and pass (by the first caller; the others wait for that read rather
        than make their own): a host that asks after the generation moved costs its own desired
        state, not a read of every farm and report (at thousands of hosts, O(hosts^2) a generation).
        A pass that has ended (or is under way: its lock is waited for) is always seen, as when
        every miss read the store."""
        with self._inputs_lock:
            with self._reconcile_lock:
                key = (self.polls.generation, self._passes_done)
            kept = self._inputs
            if kept is not None and kept[0] == key:
                return kept[1]
            inputs = self._read_inputs()
            self._inputs = (key, inputs)  # a generation or pass that moved meanwhile reads again
            return inputs


def init(state_dir: Path, addresses: list[str]) -> str:
    """`softudc init`: the CA, the API's server certificate, the store; returns an admin token."""
    private_dir(state_dir)  # the store holds every VNET secret: 0700, its files 0600
    ca = CertificateAuthority.create(state_dir / "pki")
    issued = ca.issue_server("softudc-manager", addresses)
    write_atomic(state_dir / "pki" / "server.crt", issued.cert_pem, 0o644)
    create_exclusive(state_dir / "pki" / "server.key", issued.key_pem)  # 0600 from its first byte
    SqliteStore(state_dir / "state.db").close()
    return TokenStore(state_dir / "tokens.json").create("admin", "admin")
