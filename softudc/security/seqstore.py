"""Outbound ESP sequence numbers that survive restarts: reserved in blocks, on disk before use.

AES-GCM and GMAC fail badly if one (key, nonce) pair is used twice: for `conf` the XOR of two
plaintexts leaks, and for both levels the GHASH key can be recovered, which allows forgery
(RFC 4106 §3.1, RFC 4543 §5). Our nonce is salt ‖ 64-bit sequence number and the key is derived
from (master secret, VNET, epoch, sender), so a gatekeeper that restarted and counted from 1 again
under the same key reused every nonce it had sent before (audit R1).

The fix here: a sender takes sequence numbers in blocks; before it uses a block, the block's end
is written as the key's mark to a file and fsync'ed (the file, then its directory). After a restart a sender continues
after the mark, so it never sends a number it may have sent before, and its peers, whose replay
windows sit at or below the mark, accept the new numbers at once (a forward jump of at most one
block, far less than the 2^31 the ESN inference tolerates). Writing once per block keeps the cost
to one fsync per `block` packets.

Why this and not a per-boot key: the SPI has no spare bits for a boot value (12 bits VNET, 16 bits
epoch), and a random value small enough to fit would repeat between boots. A mark on disk makes
reuse impossible as long as the file survives; it lives next to the gatekeeper's state, which
holds the keys themselves. Entries are per derived key (a hash of it, never the key), so a new
secret or epoch starts a fresh count; the file keeps the most recently used `max_entries` keys.
A key installed again after that many others (only without the manager's rotation, which never
brings a key back) would count from 1 again: the limit keeps each write small.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

from softudc.atomicfile import move_aside, write_atomic
from softudc.wire.esp import EspKey

log = logging.getLogger("softudc.security.seqstore")

BLOCK = 1 << 20  # numbers reserved per write: one fsync per million packets
MAX_ENTRIES = 16384  # keys remembered (least recently allocated out): with rotation, old keys never return


def key_id(key: EspKey) -> str:
    """A name for a derived key that reveals nothing about it."""
    return hashlib.sha256(b"softudc esp seq v1" + key.level.encode() + key.key + key.salt).hexdigest()[:32]


class SequenceStore:
    """Per-key high-water marks of outbound sequence numbers. With `path` None the marks live in
    memory only: they survive a VNET being deleted and made again, not a restart (tests)."""

    def __init__(self, path: Path | None = None, block: int = BLOCK, max_entries: int = MAX_ENTRIES) -> None:
        if block < 1:
            raise ValueError(f"block {block}: reserve at least one sequence number per write")
        self.path = path
        self.block = block
        self.max_entries = max_entries
        self.writes = 0
        self._lock = threading.Lock()
        self._marks: OrderedDict[str, int] = self._load()

    def _load(self) -> OrderedDict[str, int]:
        if self.path is None or not self.path.exists():
            return OrderedDict()
        try:
            raw = json.loads(self.path.read_text())
            marks = OrderedDict((str(k), int(v)) for k, v in raw["marks"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            # Never silently count from 1 again: keep the damaged file for an operator and say so.
            aside = move_aside(self.path)
            log.error("%s is unreadable (%s), moved to %s: ESP senders start from 1 again under keys they may "
                      "have used; rotate the secured VNETs' keys on the manager (docs/manager.md, key rotation)",
                      self.path, e, aside)
            return OrderedDict()
        return marks

    def allocate(self, kid: str, floor: int = 0) -> tuple[int, int]:
        """The next block of sequence numbers under this key, [first, last], disjoint from every
        block handed out before (in this run or an earlier one): on disk before this returns.
        Even two SA objects for one key (a VNET deleted and made again while a send was in
        flight) can never get the same number. `floor`: the caller's own last number, in case
        the key's mark was pruned from the file meanwhile."""
        with self._lock:
            first = max(self._marks.get(kid, 0), floor) + 1
            last = first + self.block - 1
            self._marks[kid] = last
            self._marks.move_to_end(kid)
            while len(self._marks) > self.max_entries:
                self._marks.popitem(last=False)
            self._write()
            return first, last

    def _write(self) -> None:
        self.writes += 1
        if self.path is None:
            return
        # tmp file, fsync, rename, fsync of the directory: the mark is durable once this returns.
        write_atomic(self.path, json.dumps({"marks": list(self._marks.items())}).encode())
