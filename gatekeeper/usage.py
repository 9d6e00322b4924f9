"""What each domain on this host has used so far, for usage accounting (issue 15; contract:
hoststate.VmUsage, carried in the report's `load.usage`; the manager integrates it in
softudc/manager/usage.py).

The counters are libvirt's, as they are: CPU time since the domain's QEMU started, memory held
now, and the bytes of each NIC on a VNET (getAllDomainStats names a NIC by its tap; the tap's VNET
comes from the domain's XML, looked up once per domain and again when its taps change). Nothing is
smoothed or kept here but that map: a restarted gatekeeper reports the same counters, so the
manager counts nothing twice. Every domain that runs or is paused is reported (a paused one too:
leaving it out would look to the manager like a domain gone, and its return like a new one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from softudc.model.hoststate import MAX_NAME, MAX_VMS, is_managed

log = logging.getLogger("gatekeeper.usage")

ACTIVE = ("running", "paused", "suspended", "shutting-down")  # driver.STATES of a domain with a QEMU


class Nic(Protocol):
    @property
    def vnet(self) -> int | None: ...
    @property
    def tap(self) -> str | None: ...


Nics = Callable[[str], Sequence[Nic]]


def _identity(s: dict[str, Any]) -> str:
    """uuid/id of one start of the domain ("" when the driver does not say)."""
    uuid, dom_id = s.get("uuid"), s.get("id")
    return f"{uuid or ''}/{dom_id}"[:80] if uuid or dom_id else ""


class UsageMeter:
    """`sample(stats)` -> {vm: VmUsage as JSON} from one getAllDomainStats answer."""

    def __init__(self, nics: Nics | None = None) -> None:
        self.nics = nics
        self.taps: dict[str, dict[str, int]] = {}  # vm -> tap -> VNET id

    def sample(self, stats: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in stats:
            name = s.get("name")
            if not isinstance(name, str) or not is_managed(name) or len(name) > MAX_NAME \
                    or s.get("state") not in ACTIVE or len(out) >= MAX_VMS:
                continue
            out[name] = self._one(name, s)
        for gone in set(self.taps) - set(out):
            del self.taps[gone]
        return out

    def _one(self, name: str, s: dict[str, Any]) -> dict[str, Any]:
        kib = s.get("memory_kib") or 0
        row: dict[str, Any] = {"cpu_ns": max(int(s.get("cpu_time_ns") or 0), 0),
                               "memory_mib": round(max(float(kib), 0.0) / 1024.0, 3)}
        ident = _identity(s)
        if ident:
            row["id"] = ident
        net = self._net(name, s.get("net") or [])
        if net:
            row["net"] = net
        return row

    def _net(self, name: str, nets: list[dict[str, Any]]) -> list[dict[str, int]]:
        taps = [n.get("name") for n in nets]
        known = self.taps.get(name)
        if known is None or any(t not in known for t in taps if t):
            known = self.taps[name] = self._vnets_of(name)
        out: list[dict[str, int]] = []
        for n in nets:
            vnet = known.get(n.get("name") or "")
            if vnet and len(out) < 64:
                out.append({"vnet": vnet, "rx_bytes": max(int(n.get("rx_bytes") or 0), 0),
                            "tx_bytes": max(int(n.get("tx_bytes") or 0), 0)})
        return out

    def _vnets_of(self, name: str) -> dict[str, int]:
        if self.nics is None:
            return {}
        try:
            return {n.tap: n.vnet or 0 for n in self.nics(name) if n.tap}  # 0: not on a VNET
        except Exception as e:  # gone meanwhile, or libvirt busy: its bytes are counted next time
            log.debug("%s: NICs not read (%s); its network bytes wait for the next report", name, e)
            return {}
