"""The manager's service, independent of HTTP (`api` maps routes onto it): the Manager composes
its jobs, each in its own module, and keeps the method names the API calls.

    farmops.py   farms: list, get, apply, delete, plan; the event log
    hosts.py     hosts: join, authenticate, reports, states an admin sets, removal
    moves.py     moving an instance to another host (admission, cancel)
    keys.py      VNET keys: made and rotated by the controllers, rotated on demand
    planning.py  the controllers' reconcile pass over every farm
    loop.py      the controllers' loop: a thread driven by the store's watch and a timer
    longpoll.py  each host's desired state, cached per generation, and the long polls

Requests store and return; the controller loop plans (never inside a request). An apply waits,
bounded, for the loop to have planned it, so its answer carries the status as before.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from softudc.atomicfile import create_exclusive, private_dir, write_atomic
from softudc.manager.auth import TokenStore
from softudc.manager.desired import desired_json_many
from softudc.manager.errors import ApiError as ApiError  # raised by the API's operations; importers find it here
from softudc.manager.farmops import FarmOps
from softudc.manager.farms import FARMS, FarmCache
from softudc.manager.hosts import HOST_STATES as HOST_STATES  # importers find it here
from softudc.manager.hosts import Hosts
from softudc.manager.keys import Keys
from softudc.manager.longpoll import MAX_WAIT_S as MAX_WAIT_S  # the longest long poll; importers find it here
from softudc.manager.longpoll import LongPolls
from softudc.manager.loop import RECONCILE_EVERY_S as RECONCILE_EVERY_S  # importers find it here
from softudc.manager.loop import ControllerLoop
from softudc.manager.metrics import make_registry
from softudc.manager.moves import Moves
from softudc.manager.planning import Planning
from softudc.manager.planning import _check_vnet_ids as _check_vnet_ids  # tests reach it here
from softudc.manager.planning import _vnet_ids as _vnet_ids
from softudc.manager.store import SqliteStore, Store
from softudc.pki import CertificateAuthority

log = logging.getLogger("softudc.manager")


class Manager(Keys, Planning, FarmOps, Hosts, Moves):
    """The manager's state and the API's operations, independent of HTTP. The controller loop
    (one thread, "softudc-controllers") starts with the first call that needs it, or `start()`;
    `close()` stops it."""

    def __init__(self, state_dir: Path, store: Store | None = None) -> None:
        self.state_dir = private_dir(state_dir)  # 0700 even when an older version made it 0755
        self.store: Store = store if store is not None else SqliteStore(state_dir / "state.db")
        self.tokens = TokenStore(state_dir / "tokens.json")
        self.ca = CertificateAuthority.load(state_dir / "pki")
        self._reconcile_lock = threading.RLock()
        self.farms: FarmCache = FARMS  # validated descriptors, parsed once per text (audit R11)
        # Desired state per host, cached per reconcile generation; long polls wake only when their
        # host's etag moved (audit R11).
        self.polls = LongPolls(lambda host: self._desired(host), lambda hosts: self._desired_many(hosts))
        # The loop marks a pass done (an apply waiting for it answers) before it lets long polls go.
        self.controllers = ControllerLoop(self.store, lambda: self.reconcile(wake=False), RECONCILE_EVERY_S,
                                          after=self.polls.new_generation)
        self._compacted_at = 0.0
        self.registry, self.requests, self.events = make_registry(self.store, self.reports, self.polls.waiting)
        self._addresses: dict[str, str] = {}  # host -> where its reports come from (migration URIs, R20)

    def start(self) -> None:
        """Start the controller loop (once; every call that stores something for it calls this)."""
        self.controllers.start()

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until the controller loop has looked at everything stored before this call (and
        planned what was news); False after `timeout`. An apply's answer and tests use it."""
        return self.controllers.settle(timeout)

    def close(self) -> None:
        """Stop the controller loop (within a second when it is idle)."""
        self.controllers.stop()

    def _event(self, kind: str, name: str, type_: str, message: str) -> None:
        self.store.event(kind, name, type_, message)
        self.events.labels(type_).inc()

    def desired(self, peer_cn: str | None, name: str, since: str = "", wait: float = 0.0) -> dict[str, Any]:
        """What a gatekeeper should run now (mutual TLS only: its certificate names the host), with
        an `etag`; cached per reconcile generation. Given the etag it has (`since`) and `wait`, a
        long poll that holds the calling thread (the threaded server's way; the ASGI route awaits
        wait_desired instead)."""
        self._check_peer(peer_cn, name)
        self.start()  # the loop moves the generations this answer is cached by
        if wait <= 0:
            return self.polls.current(name)
        return self.polls.wait(name, since, wait)

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

    def _desired(self, name: str) -> dict[str, Any]:
        return self._desired_many([name])[name]

    def _desired_many(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """The desired state of each host in `names`, the farms and reports read once for all (a
        generation's long polls: 500 waiting hosts cost one read of the store, not 500)."""
        with self._reconcile_lock:  # one view of the farms: never a pass half written
            farms = [(f, o.status) for o in self.store.objects("farm") if (f := self.farms.for_hosts(o))]
            reports = self.reports()
        keys = functools.cache(self._vnet_keys)  # each VNET's keys read and derived once for all hosts
        # The contract's DesiredState, validated, as JSON in the version the host speaks. Outside
        # the lock: an apply waiting for it is not held up by a generation's many long polls.
        return desired_json_many(names, farms, reports, keys)  # each VNET's members worked out once


def init(state_dir: Path, addresses: list[str]) -> str:
    """`softudc init`: the CA, the API's server certificate, the store; returns an admin token."""
    private_dir(state_dir)  # the store holds every VNET secret: 0700, its files 0600
    ca = CertificateAuthority.create(state_dir / "pki")
    issued = ca.issue_server("softudc-manager", addresses)
    write_atomic(state_dir / "pki" / "server.crt", issued.cert_pem, 0o644)
    create_exclusive(state_dir / "pki" / "server.key", issued.key_pem)  # 0600 from its first byte
    SqliteStore(state_dir / "state.db").close()
    return TokenStore(state_dir / "tokens.json").create("admin", "admin")
