"""Keyed VARP for one host: the trailer (key id, timestamp, truncated HMAC-SHA256, DESIGN: VARP)
added to the messages it sends on VNETs with keys, and the checks on those it receives: signed
under one of the VNET's epochs, fresh within the window, and never seen before (a replay cache
pruned by time in arrival order, so pruning costs only what it removes: audit R28)."""

from __future__ import annotations

import hmac
import ipaddress
import threading
from collections import deque
from collections.abc import Callable

from softudc.security.keys import VnetKeys, derive_varp_key, parse_spi, spi_for, varp_mac
from softudc.wire import VarpMessage, VarpOp, VarpTrailer, build_varp
from softudc.wire.varp import VARP_LEN

MAX_VARP_SEEN = 65536  # signed VARP messages remembered within the freshness window (replay cache)


class VarpAuth:
    def __init__(self, keys_of: Callable[[int], VnetKeys | None], my_addr: ipaddress.IPv4Address,
                 wall_ns: Callable[[], int], window_s: float) -> None:
        self._keys_of = keys_of  # a VNET's current keys (the SA table's), None without
        self._my_addr = my_addr
        self._wall_ns = wall_ns
        self._window_ns = int(window_s * 1e9)
        self._lock = threading.Lock()
        self._derived: dict[tuple[int, int], bytes] = {}
        # (key id, ts, mac), and the same in arrival order with its timestamp.
        self.seen: set[tuple[int, int, bytes]] = set()
        self.seen_order: deque[tuple[int, tuple[int, int, bytes]]] = deque()

    def forget(self, vnet: int) -> None:
        """The VNET's keys changed or went: no VARP key derived from the previous ones stays."""
        self._derived = {k: v for k, v in self._derived.items() if k[0] != vnet}

    def message(self, op: VarpOp, vnet: int, mac: bytes) -> bytes:
        """A VARP message from this host; signed when the VNET has keys."""
        body = build_varp(VarpMessage(op, vnet, mac, self._my_addr))
        keys = self._keys_of(vnet)
        if keys is None or not keys.secrets:
            return body
        epoch = keys.send_epoch if keys.send_epoch is not None else max(keys.secrets)
        key_id, ts = spi_for(vnet, epoch), self._wall_ns()
        mac_ = varp_mac(self._key(vnet, epoch, keys.secrets[epoch]), body, key_id, ts)
        return build_varp(VarpMessage(op, vnet, mac, self._my_addr, VarpTrailer(key_id, ts, mac_)))

    def refused(self, msg: VarpMessage, buf: bytes) -> str | None:
        """Why a received VARP message must be dropped, or None. VNETs with keys accept only
        messages signed under one of their epochs, fresh (within the window) and not seen before."""
        keys = self._keys_of(msg.vnet)
        if keys is None or not keys.secrets:
            return None
        t = msg.trailer
        if t is None:
            return "unauthenticated"
        try:
            vnet, epoch = parse_spi(t.key_id)
        except ValueError:
            return "unknown_key"
        if vnet != msg.vnet or epoch not in keys.secrets:
            return "unknown_key"
        expected = varp_mac(self._key(vnet, epoch, keys.secrets[epoch]), buf[:VARP_LEN], t.key_id, t.timestamp_ns)
        if not hmac.compare_digest(expected, t.mac):
            return "bad_mac"
        now = self._wall_ns()
        if abs(now - t.timestamp_ns) > self._window_ns:
            return "stale"
        seen_key = (t.key_id, t.timestamp_ns, t.mac)
        with self._lock:
            self._prune(now - self._window_ns)
            if seen_key in self.seen:
                return "replayed"
            if len(self.seen) >= MAX_VARP_SEEN:
                # Only messages with a valid MAC get here, so only key holders can fill the cache;
                # refusing (VARP retries) keeps every replay out, evicting early would not.
                return "replay_cache_full"
            self.seen.add(seen_key)
            self.seen_order.append((t.timestamp_ns, seen_key))
        return None

    def _key(self, vnet: int, epoch: int, secret: bytes) -> bytes:
        key = self._derived.get((vnet, epoch))
        if key is None:
            key = self._derived[(vnet, epoch)] = derive_varp_key(secret, vnet, epoch)
        return key

    def _prune(self, oldest_ns: int) -> None:
        """Forget messages older than the freshness window: a replay of them is refused as stale.
        Entries are pruned in arrival order; one that arrived early with a late timestamp waits
        behind it, which only keeps it longer than needed, never shorter. Called with the lock."""
        while self.seen_order and self.seen_order[0][0] < oldest_ns:
            self.seen.discard(self.seen_order.popleft()[1])
