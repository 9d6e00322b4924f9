"""Security associations of one host for its secured VNETs (`auth` and `conf`).

Outbound: one SA per VNET, for its send epoch: SPI, this host's derived key, a 64-bit sequence
counter. A number is used only after a `SequenceStore` has it on disk, so a restarted gatekeeper
continues above everything it sent before and never reuses a (key, nonce) pair (audit R1); its
peers accept the higher numbers at once. The counter stops before it could wrap.

Inbound: one SA per (SPI, sender address), derived from the VNET's master secret for that epoch,
each with its own anti-replay window. A new (SPI, sender) gets a temporary SA that joins the table
only once a packet verified under it, and the table is an LRU of bounded size, so packets from
spoofed addresses cost an HKDF and a tag check but no memory (audit R17); on a VNET with a member
list (from the manager) a non-member's packets are refused before any key is derived.

Every SA remembers the fingerprint of the secret it came from; installing keys rebuilds any SA
whose epoch's secret (or level) changed, even under the same epoch number, and removing a VNET's
keys removes its SAs (audit R7).

Extended sequence numbers: a receiver infers the high 32 bits from its window. One that joined
late (a fresh window) or that saw only part of a peer's traffic (the peer's counter is shared by
all its destinations on the VNET) can be 2^32 or more behind; when the tag fails for the inferred
number, the next `ESN_LOOKAHEAD` high halves are tried before giving up (audit R8). That bounds
a forged packet's cost to 1 + ESN_LOOKAHEAD tag checks; the manager rotates keys on a schedule, so
a counter (restarting at 1 with each new epoch) stays far from the lookahead's reach.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import numpy as np

from gatekeeper.vnet import esp_batch, offload
from gatekeeper.vnet.esp_native import engine, native_key, tso_count
from gatekeeper.vnet.offload import Segments, VnetHdr
from softudc.security.keys import VnetKeys, derive_esp_key, parse_spi, secret_fingerprint, spi_for
from softudc.security.replay import ReplayWindow
from softudc.security.seqstore import SequenceStore, key_id
from softudc.wire import esp
from softudc.wire.errors import WireError
from softudc.wire.esp import EspKey

ESN_LOOKAHEAD = 4  # high halves tried past the inferred one when the tag fails
MAX_INBOUND_SAS = 4096
SEQ_LAST = (1 << 64) - 1  # the last number a sender may use under one key (RFC 4303 §3.3.3: never cycle)


@dataclass
class OutboundSA:
    spi: int
    key: EspKey
    secret_fp: bytes
    next_seq: int
    reserved: int  # the last number of the block in use (on disk as used)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class InboundSA:
    vnet: int
    key: EspKey
    secret_fp: bytes
    window: ReplayWindow = field(default_factory=ReplayWindow)
    lock: threading.Lock = field(default_factory=threading.Lock)


class EspDrop(Exception):
    """A packet the SAs refuse; `reason` is the counter it goes to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SecurityAssociations:
    def __init__(self, local_addr: str, seq_store: SequenceStore | None = None,
                 max_inbound: int = MAX_INBOUND_SAS) -> None:
        self.local_addr = local_addr
        self.seq_store = seq_store or SequenceStore()
        self.max_inbound = max_inbound
        self._keys: dict[int, VnetKeys] = {}
        self._out: dict[int, OutboundSA] = {}
        self._members: dict[int, frozenset[str]] = {}  # VNET -> the only senders accepted (empty: any)
        self._in: OrderedDict[tuple[int, str], InboundSA] = OrderedDict()
        self._table = threading.Lock()  # guards _in (the receive thread and the API both change it)
        self.counts: Counter[str] = Counter()

    # --- keys ---------------------------------------------------------------------------------

    def set_keys(self, vnet: int, keys: VnetKeys | None) -> None:
        """Install (or with None remove) a VNET's keys. The outbound SA is kept (with its counter)
        only while its epoch, level and secret stay the same; inbound SAs likewise."""
        if keys is None:
            self._keys.pop(vnet, None)
            self._out.pop(vnet, None)
            self._members.pop(vnet, None)
        else:
            keys.validate(vnet)
            self._keys[vnet] = keys
            self._set_outbound(vnet, keys)
        self._prune()

    def _prune(self) -> None:
        """Drop inbound SAs the keys or member lists no longer allow."""
        with self._table:
            for (spi, src), sa in list(self._in.items()):
                members = self._members.get(sa.vnet)
                if not self._current(spi, sa.secret_fp) or (members is not None and src not in members):
                    del self._in[(spi, src)]

    def _set_outbound(self, vnet: int, keys: VnetKeys) -> None:
        if keys.level is None or keys.send_epoch is None:
            self._out.pop(vnet, None)
            return
        spi = spi_for(vnet, keys.send_epoch)
        secret = keys.secrets[keys.send_epoch]
        fp = secret_fingerprint(keys.level, secret)
        current = self._out.get(vnet)
        if current is not None and (current.spi, current.secret_fp) == (spi, fp):
            return
        key = derive_esp_key(secret, vnet, keys.send_epoch, self.local_addr, keys.level)
        self._out[vnet] = OutboundSA(spi, key, fp, next_seq=1, reserved=0)  # the first seal takes a block

    def _current(self, spi: int, secret_fp: bytes) -> bool:
        """Whether an SA made from `secret_fp` for `spi` still matches the installed keys."""
        vnet, epoch = parse_spi(spi)
        k = self._keys.get(vnet)
        return (k is not None and k.level is not None and epoch in k.secrets
                and secret_fingerprint(k.level, k.secrets[epoch]) == secret_fp)

    def set_members(self, vnet: int, members: tuple[str, ...] | None) -> None:
        """The hosts a VNET accepts ESP from (the manager's member list); empty or None: any.
        A packet from anyone else is refused before any key is derived for it (audit R17)."""
        if members:
            self._members[vnet] = frozenset(members)
        else:
            self._members.pop(vnet, None)
        self._prune()

    def keys(self, vnet: int) -> VnetKeys | None:
        return self._keys.get(vnet)

    # --- outbound -----------------------------------------------------------------------------

    def seal(self, vnet: int, payload: bytes | memoryview, csum: tuple[int, int] | None = None) -> bytes | bytearray:
        """One ESP packet of `payload`. `csum` = (start, offset): a partial checksum at
        payload[start:] (a TAP frame with NEEDS_CSUM) is completed in place first (one C call
        with the seal on the native engine); `payload` must then be writable."""
        sa, seq, _ = self._reserve(vnet, 1)
        nk = native_key(sa.key)
        if nk is not None:
            return nk.seal_frame(sa.spi, seq, payload, csum)
        if csum is not None:
            if isinstance(payload, bytes):
                raise WireError("esp: a checksum to complete needs a writable payload")
            offload.complete_csum(payload, csum[0], csum[1], len(payload))
        return esp.seal(sa.key, sa.spi, seq, payload)

    def seal_super_frame(self, vnet: int, frame: memoryview, hdr: VnetHdr,
                         prefix: bytes) -> tuple[np.ndarray, int, int, int]:
        """A TAP's TCPV4 super-frame cut into segments (complete checksums: nothing inside ESP can
        say "partial"), each behind `prefix` sealed into an ESP packet of its own under
        consecutive sequence numbers: (packets, packet size, bytes used, packet count), ready for
        one UDP_SEGMENT send. The C library cuts and seals in one pass, straight from the frame;
        the Python engine cuts with `offload.segment_rows` and seals with `seal_segments`.
        OffloadError for a frame that cannot be cut."""
        if engine() != "native":
            seg = offload.segment_rows(frame, hdr, prefix, full_csum=True, room=esp_batch.TRAILER_ROOM)
            packets, size, used = self.seal_segments(vnet, seg)
            return packets, size, used, seg.count
        if hdr.gso_type & ~offload.GSO_ECN != offload.GSO_TCPV4:
            raise offload.OffloadError(f"gso_type {hdr.gso_type:#x} not supported (only TCPV4 is offered)")
        count = tso_count(frame, hdr.gso_size)  # validates the headers read below
        ihl = (frame[offload.ETH_LEN] & 0x0F) * 4
        hlen = offload.ETH_LEN + ihl + (frame[offload.ETH_LEN + ihl + 12] >> 4) * 4
        ostride = esp_batch.OVERHEAD + esp.padded_len(len(prefix) + hlen + hdr.gso_size)
        out = np.empty(count * ostride, dtype=np.uint8)
        done = used = 0
        while done < count:  # more than one round only where a sequence block runs out
            sa, first, n = self._reserve(vnet, count - done)
            nk = native_key(sa.key)
            assert nk is not None
            used = done * ostride + nk.seal_tso(sa.spi, first, prefix, frame, hdr.gso_size, done, n,
                                                out[done * ostride:], ostride)
            done += n
        return out, ostride, used, count

    def seal_segments(self, vnet: int, seg: Segments) -> tuple[np.ndarray, int, int]:
        """Every segment (rows with `esp_batch.TRAILER_ROOM`) sealed into an ESP packet of its own
        under consecutive sequence numbers: (packets as rows, packet size, bytes used: the last
        packet may be shorter), ready for one UDP_SEGMENT send."""
        ostride = esp_batch.OVERHEAD + esp.padded_len(seg.stride)
        out = np.empty((seg.count, ostride), dtype=np.uint8)
        done = used = 0
        trailers: tuple[int, int] | None = None  # the Python engine's padded lengths, once written
        while done < seg.count:  # more than one round only where a sequence block runs out
            sa, first, n = self._reserve(vnet, seg.count - done)
            last = done + n == seg.count
            nk = native_key(sa.key)
            if nk is not None:  # the C library: trailers, headers and AEAD of the whole chunk in one call
                rows = seg.rows[done:done + n]
                used = done * ostride + nk.seal_rows(sa.spi, first, rows, rows.shape[1], n,
                                                     (seg.stride, seg.last if last else seg.stride),
                                                     out[done:done + n], ostride)
            else:
                trailers = trailers or esp_batch.add_trailers(seg)
                chunk = (trailers[0], trailers[1] if last else trailers[0])
                used = done * ostride + esp_batch.seal_rows(sa.key, sa.spi, first, seg.rows[done:done + n], chunk,
                                                            out[done:done + n])
            done += n
        return out, ostride, used

    def _reserve(self, vnet: int, count: int) -> tuple[OutboundSA, int, int]:
        """(SA, first, n): 1 <= n <= count consecutive sequence numbers from the VNET's outbound
        SA, all within a block already on disk."""
        sa = self._out.get(vnet)
        if sa is None:
            raise EspDrop("esp_no_outbound_sa")
        seq, n = self._take(sa, count)
        return sa, seq, n

    def _next_seq(self, sa: OutboundSA) -> int:
        return self._take(sa, 1)[0]

    def _take(self, sa: OutboundSA, count: int) -> tuple[int, int]:
        with sa.lock:
            if sa.next_seq > sa.reserved:
                try:
                    sa.next_seq, sa.reserved = self.seq_store.allocate(key_id(sa.key), sa.reserved)
                except OSError:  # not on disk: sending could reuse it after a crash; drop instead
                    self.counts["esp_seq_store_failed"] += 1
                    raise EspDrop("esp_seq_store_failed") from None
            seq = sa.next_seq
            if seq > SEQ_LAST:
                # Cycling would reuse nonces: stop until the manager hands out a new epoch.
                self.counts["esp_seq_exhausted"] += 1
                raise EspDrop("esp_seq_exhausted")
            n = min(count, sa.reserved - seq + 1, SEQ_LAST - seq + 1)
            sa.next_seq = seq + n
            return seq, n

    # --- inbound ------------------------------------------------------------------------------

    def _lookup(self, slot: tuple[int, str]) -> InboundSA | None:
        """The inbound SA of (SPI, sender) if the table holds it, marked as just used (LRU)."""
        with self._table:
            sa = self._in.get(slot)
            if sa is not None:
                self._in.move_to_end(slot)
        return sa

    def open(self, buf: bytes | memoryview, src: str) -> tuple[int, bytes]:
        """(vnet, EtherIP header + frame) of a verified packet; EspDrop otherwise."""
        try:
            header = esp.peek(buf)
        except WireError:
            raise EspDrop("esp_malformed") from None
        slot = (header.spi, src)
        sa = self._lookup(slot)
        fresh = sa is None
        if sa is None:
            sa = self._derive(header.spi, src)  # not kept unless the packet verifies
        with sa.lock:
            seq, payload = self._verify(sa, buf, header.seq_low)
            sa.window.update(seq)
        if fresh:
            self._keep(slot, sa)
        return sa.vnet, payload

    def open_into(self, buf: memoryview, src: str, out: memoryview) -> tuple[int, int]:
        """`open`, the payload written to out[:n] instead of returned: (vnet, n). A packet under
        an SA already in the table is decrypted straight into `out`; anything else (a new SA,
        an ESN resync) takes `open`'s path and is copied there."""
        slot = (int.from_bytes(buf[:4], "big"), src)
        sa = self._lookup(slot)
        if sa is None or len(buf) < esp_batch.OVERHEAD + 4:
            vnet, payload = self.open(buf, src)
            out[:len(payload)] = payload
            return vnet, len(payload)
        seq_low = int.from_bytes(buf[4:8], "big")
        with sa.lock:
            seq = sa.window.infer(seq_low)
            why = sa.window.check(seq)
            if why is not None:
                raise EspDrop(f"esp_{why}")
            try:
                n = esp_batch.open_into(sa.key, buf, seq, out)
            except esp.AuthError:  # maybe a later high half (ESN): `_verify` tries them
                seq, payload = self._verify(sa, buf, seq_low)
                n = len(payload)
                out[:n] = payload
            except WireError:
                raise EspDrop("esp_malformed") from None
            sa.window.update(seq)
        return sa.vnet, n

    def open_run(self, batch: memoryview, stride: int, src: str, out: memoryview) -> tuple[int, list[int]]:
        """The fast path for a batch of packets (`stride` bytes each, the last may be shorter)
        from one sender under one SA already in the table, with consecutive sequence numbers all
        above the window: the longest prefix that verifies, decrypted into `out` back to back.
        Returns (vnet, payload length of each packet opened); (-1, []) when the batch is not
        such a run. The caller opens whatever follows the prefix one by one (`open_into`), which
        says why each is dropped. With the C library the run is the longest prefix whose packets
        carry the first one's SPI and consecutive numbers, checked packet by packet in C."""
        count = -(-len(batch) // stride)
        if count < 2 or len(batch) - (count - 1) * stride < esp_batch.OVERHEAD + 4:
            return -1, []
        if engine() == "native":
            return self._open_run_native(batch, stride, count, src, out)
        heads = esp_batch.headers(batch, stride, count)
        spi = int(heads[0, 0])
        if (heads[:, 0] != spi).any():
            return -1, []
        slot = (spi, src)
        sa = self._lookup(slot)
        if sa is None:
            return -1, []
        with sa.lock:
            seq0 = sa.window.infer(int(heads[0, 1]))
            if seq0 <= sa.window.top or seq0 + count - 1 > SEQ_LAST or not esp_batch.consecutive(heads[:, 1]):
                return -1, []
            lengths = esp_batch.open_rows(sa.key, batch, stride, count, heads, seq0, out)
            mark_run(sa.window, seq0, len(lengths))
        return sa.vnet, lengths

    def _open_run_native(self, batch: memoryview, stride: int, count: int, src: str,
                         out: memoryview) -> tuple[int, list[int]]:
        spi = int.from_bytes(batch[:4], "big")
        slot = (spi, src)
        sa = self._lookup(slot)
        if sa is None:
            return -1, []
        nk = native_key(sa.key)
        assert nk is not None
        with sa.lock:
            seq0 = sa.window.infer(int.from_bytes(batch[4:8], "big"))
            if seq0 <= sa.window.top or seq0 + count - 1 > SEQ_LAST:
                return -1, []
            lengths = nk.open_burst(spi, seq0, batch, stride, out)
            mark_run(sa.window, seq0, len(lengths))
        return (sa.vnet, lengths) if lengths else (-1, [])

    def _verify(self, sa: InboundSA, buf: bytes | memoryview, seq_low: int) -> tuple[int, bytes]:
        seq = sa.window.infer(seq_low)
        why = sa.window.check(seq)
        if why is not None:
            raise EspDrop(f"esp_{why}")
        for attempt in range(ESN_LOOKAHEAD + 1):
            candidate = seq + (attempt << 32)
            if candidate > SEQ_LAST or (attempt and sa.window.check(candidate) is not None):
                break
            try:
                payload = esp.open_(sa.key, buf, candidate)
            except esp.AuthError:
                continue
            except WireError:
                raise EspDrop("esp_malformed") from None
            if attempt:
                self.counts["esp_esn_resync"] += 1
            return candidate, payload
        raise EspDrop("esp_auth_failed")

    def _derive(self, spi: int, src: str) -> InboundSA:
        try:
            vnet, epoch = parse_spi(spi)
        except ValueError:
            raise EspDrop("esp_unknown_spi") from None
        keys = self._keys.get(vnet)
        if keys is None or keys.level is None or epoch not in keys.secrets:
            raise EspDrop("esp_unknown_spi")
        members = self._members.get(vnet)
        if members is not None and src not in members:
            raise EspDrop("esp_not_member")
        secret = keys.secrets[epoch]
        try:
            key = derive_esp_key(secret, vnet, epoch, src, keys.level)
        except ValueError:  # not an address we can derive a key for
            raise EspDrop("esp_malformed") from None
        return InboundSA(vnet, key, secret_fingerprint(keys.level, secret))

    def _keep(self, slot: tuple[int, str], sa: InboundSA) -> None:
        """A temporary SA whose first packet verified joins the table (least recently used out)."""
        with self._table:
            members = self._members.get(sa.vnet)
            if slot in self._in or not self._current(slot[0], sa.secret_fp) or (members is not None
                                                                               and slot[1] not in members):
                return  # another thread kept one first, or the keys or members changed meanwhile
            self._in[slot] = sa
            while len(self._in) > self.max_inbound:
                self._in.popitem(last=False)
                self.counts["esp_sa_evicted"] += 1

    # --- introspection ------------------------------------------------------------------------

    @property
    def engine(self) -> str:
        """"native" (the C library seals and opens) or "python" (esp_batch's fallback)."""
        return engine()

    def inbound_count(self) -> int:
        return len(self._in)

    def describe(self, vnet: int) -> dict[str, object]:
        keys = self._keys.get(vnet)
        out = self._out.get(vnet)
        with self._table:
            inbound = sum(1 for (spi, _) in self._in if parse_spi(spi)[0] == vnet)
        return {
            "security": keys.level if keys and keys.level else "none",
            "epochs": sorted(keys.secrets) if keys else [],
            "send_epoch": keys.send_epoch if keys else None,
            "key_fingerprint": keys.fingerprint() if keys else None,
            "spi": f"{out.spi:#010x}" if out else None,
            "inbound_sas": inbound,
        }


def mark_run(window: ReplayWindow, first: int, count: int) -> None:
    """`window.update` of first, first + 1, ..., first + count - 1 at once (all above the top)."""
    if count <= 0:
        return
    if first <= window.top:
        for seq in range(first, first + count):
            window.update(seq)
        return
    top = first + count - 1
    shift = top - window.top
    mask = (1 << window.size) - 1
    older = window.bitmap << shift if shift < window.size else 0
    window.bitmap = (older | ((1 << count) - 1)) & mask
    window.top = top
