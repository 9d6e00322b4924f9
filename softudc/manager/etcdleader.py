"""EtcdLeadership: managers on an etcd cluster lead by the key `<prefix>/leader`, held with a
lease (the campaign, renewal and watchdog are `leader._Campaign`'s; softudc/manager/leader.py
says how the group works)."""

from __future__ import annotations

import contextlib
import json
import time
from contextlib import AbstractContextManager
from typing import Any

from softudc.etcd.client import EtcdClient, EtcdError, cmp_create, cmp_mod, op_put
from softudc.manager.leader import LEADER_TTL_S, MEMBER_GONE_S, WATCH_S, LeaderInfo, _Campaign


class EtcdLeadership(_Campaign):
    """Managers on etcd: whoever created `<prefix>/leader` (with its lease) leads; the term is
    counted in `<prefix>/leaderterm`, members are `<prefix>/managers/<id>` (each on its own lease).
    Give it a client with a short timeout (about 1 s): its calls bound how soon a follower sees the
    key gone."""

    backend = "etcd"

    def __init__(self, client: EtcdClient, prefix: str, id: str, url: str = "", ttl: int = LEADER_TTL_S) -> None:
        super().__init__(id, url)
        self.client, self.ttl = client, ttl
        self.key = f"{prefix}/leader".encode()
        self.term_key = f"{prefix}/leaderterm".encode()
        self.members_prefix = f"{prefix}/managers/".encode()
        self.keep_every_s = ttl / 4
        self._lease = 0  # the leader key's lease, while this manager holds (or just held) it
        self._created = 0  # the leader key's create revision: this leader's writes compare it
        self._member_lease = 0
        self._lost_reason = f"its lease ran out (not renewed within {ttl} s)"

    def _renew_window(self) -> float:
        return float(self.ttl - 1)

    def _campaign(self) -> None:
        if self._lease:  # stepped down while holding it: let the others campaign at once
            self._release()
        rev, kvs, _ = self.client.range(self.key)
        if kvs:
            self._last_seen_leader = time.monotonic()
            self.client.watch(self.key, start_revision=rev + 1, timeout=WATCH_S)  # returns when it goes
            return
        _, terms, _ = self.client.range(self.term_key)
        term = int(terms[0].value or b"0") + 1 if terms else 1
        t0 = time.monotonic()
        lease = self.client.lease_grant(self.ttl)
        self._since, self._term = time.time(), term
        won, rev, _ = self.client.txn(
            [cmp_create(self.key, "EQUAL", 0), cmp_mod(self.term_key, "EQUAL", terms[0].mod_revision if terms else 0)],
            [op_put(self.key, self._info(self._reconciled).dump(), lease), op_put(self.term_key, str(term).encode())])
        if not won:  # another manager was quicker
            self._lease = lease
            self._release()
            return
        self._lease, self._created = lease, rev
        self._deadline = t0 + self.ttl - 1  # counted from before the grant: on the safe side
        self._become(term)

    def _renew(self) -> bool:
        t0 = time.monotonic()
        if self.client.lease_keepalive(self._lease) <= 0:
            self._lost_reason = f"its lease ran out (not renewed within {self.ttl} s)"
            return False
        kvs = self.client.range(self.key)[1]
        if not kvs or kvs[0].create_revision != self._created:  # deleted by hand, or a store restored
            self._lost_reason = "its leader key was deleted or is another manager's"
            return False
        with self._lock:
            if self._leading:
                self._deadline = t0 + self.ttl - 1
        return True

    def fence(self, store: object) -> AbstractContextManager[None]:
        """Every object write of this thread (a controllers' pass) compares the leader key's create
        revision: a leader that lost its lease in the middle of a pass writes nothing more, however
        late its watchdog runs (the store raises NotLeader). A store that cannot fence: none."""
        fenced = getattr(store, "fenced", None)
        if fenced is None or not self._created or not self.is_leader():
            return contextlib.nullcontext()
        cm: AbstractContextManager[None] = fenced(self.key, self._created)
        return cm

    def _write_info(self, info: LeaderInfo) -> bool:
        won, _, _ = self.client.txn([cmp_create(self.key, "EQUAL", self._created)],
                                    [op_put(self.key, info.dump(), self._lease)])
        return won

    def leader(self) -> LeaderInfo | None:
        if self.is_leader():
            return self._info(self._reconciled)
        kvs = self.client.range(self.key)[1]
        return LeaderInfo.load(kvs[0].value) if kvs else None

    def _release(self) -> None:
        lease, self._lease = self._lease, 0
        if lease:
            with contextlib.suppress(EtcdError):  # unreachable: the lease runs out on its own
                self.client.lease_revoke(lease)

    def _abandon(self) -> None:
        self._lease = self._member_lease = 0

    def _write_member(self, member: dict[str, Any]) -> None:
        if not self._member_lease or self.client.lease_keepalive(self._member_lease) <= 0:
            self._member_lease = self.client.lease_grant(int(MEMBER_GONE_S))
        self.client.put(self.members_prefix + self.id.encode(), json.dumps(member).encode(), self._member_lease)

    def _leave(self) -> None:
        lease, self._member_lease = self._member_lease, 0
        if lease:
            with contextlib.suppress(EtcdError):
                self.client.lease_revoke(lease)

    def members(self) -> list[dict[str, Any]]:
        seen = []
        for kv in self.client.range(self.members_prefix, prefix=True)[1]:
            with contextlib.suppress(ValueError):
                m = json.loads(kv.value)
                if isinstance(m, dict):
                    seen.append(m)
        return seen
