"""Security associations of one host for its secured VNETs (`auth` and `conf`).

Outbound: one SA per VNET, for its send epoch: SPI, this host's derived key, a 64-bit sequence
counter that is never reused under that key. Inbound: one SA per (SPI, sender address), derived
on first use from the VNET's master secret for that epoch, each with its own anti-replay window.
Removing an epoch removes its SAs, so packets under a retired key fail (counted) from then on.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from softudc.security.keys import VnetKeys, derive_esp_key, parse_spi, spi_for
from softudc.security.replay import ReplayWindow
from softudc.wire import esp
from softudc.wire.errors import WireError
from softudc.wire.esp import EspKey


@dataclass
class OutboundSA:
    spi: int
    key: EspKey
    seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))  # next() is atomic in CPython


@dataclass
class InboundSA:
    vnet: int
    key: EspKey
    window: ReplayWindow = field(default_factory=ReplayWindow)
    lock: threading.Lock = field(default_factory=threading.Lock)


class EspDrop(Exception):
    """A packet the SAs refuse; `reason` is the counter it goes to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SecurityAssociations:
    def __init__(self, local_addr: str) -> None:
        self.local_addr = local_addr
        self._keys: dict[int, VnetKeys] = {}
        self._out: dict[int, OutboundSA] = {}
        self._in: dict[tuple[int, str], InboundSA] = {}
        self.counts: Counter[str] = Counter()

    def set_keys(self, vnet: int, keys: VnetKeys | None) -> None:
        """Install (or with None remove) a VNET's keys. Keeping the send epoch keeps the
        outbound SA and its sequence counter; inbound SAs of epochs no longer present go."""
        if keys is None:
            self._keys.pop(vnet, None)
            self._out.pop(vnet, None)
        else:
            keys.validate(vnet)
            self._keys[vnet] = keys
            current = self._out.get(vnet)
            if keys.level is None or keys.send_epoch is None:
                self._out.pop(vnet, None)
            elif current is None or current.spi != spi_for(vnet, keys.send_epoch):
                secret = keys.secrets[keys.send_epoch]
                self._out[vnet] = OutboundSA(spi_for(vnet, keys.send_epoch),
                                             derive_esp_key(secret, vnet, keys.send_epoch, self.local_addr, keys.level))
        for (spi, src) in list(self._in):
            v, epoch = parse_spi(spi)
            k = self._keys.get(v)
            if k is None or epoch not in k.secrets or k.level is None:
                del self._in[(spi, src)]

    def keys(self, vnet: int) -> VnetKeys | None:
        return self._keys.get(vnet)

    def seal(self, vnet: int, payload: bytes | memoryview) -> bytes:
        sa = self._out.get(vnet)
        if sa is None:
            raise EspDrop("esp_no_outbound_sa")
        return esp.seal(sa.key, sa.spi, next(sa.seq), payload)

    def open(self, buf: bytes | memoryview, src: str) -> tuple[int, bytes]:
        """(vnet, EtherIP header + frame) of a verified packet; EspDrop otherwise."""
        try:
            header = esp.peek(buf)
        except WireError:
            raise EspDrop("esp_malformed") from None
        sa = self._in.get((header.spi, src)) or self._inbound(header.spi, src)
        with sa.lock:
            seq = sa.window.infer(header.seq_low)
            why = sa.window.check(seq)
            if why is not None:
                raise EspDrop(f"esp_{why}")
            try:
                payload = esp.open_(sa.key, buf, seq)
            except esp.AuthError:
                raise EspDrop("esp_auth_failed") from None
            except WireError:
                raise EspDrop("esp_malformed") from None
            sa.window.update(seq)
        return sa.vnet, payload

    def _inbound(self, spi: int, src: str) -> InboundSA:
        try:
            vnet, epoch = parse_spi(spi)
        except ValueError:
            raise EspDrop("esp_unknown_spi") from None
        keys = self._keys.get(vnet)
        if keys is None or keys.level is None or epoch not in keys.secrets:
            raise EspDrop("esp_unknown_spi")
        sa = InboundSA(vnet, derive_esp_key(keys.secrets[epoch], vnet, epoch, src, keys.level))
        self._in[(spi, src)] = sa
        return sa

    def describe(self, vnet: int) -> dict[str, object]:
        keys = self._keys.get(vnet)
        out = self._out.get(vnet)
        return {
            "security": keys.level if keys and keys.level else "none",
            "epochs": sorted(keys.secrets) if keys else [],
            "send_epoch": keys.send_epoch if keys else None,
            "spi": f"{out.spi:#010x}" if out else None,
            "inbound_sas": sum(1 for (spi, _) in self._in if parse_spi(spi)[0] == vnet),
        }
