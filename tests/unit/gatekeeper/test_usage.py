"""gatekeeper/usage.py: each active managed domain's counters as the contract says, NICs by VNET
(the tap map read once, again when taps change), identity when the driver gives one, and the
report's `load.usage` from LoadMeter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.load import LoadMeter
from gatekeeper.usage import UsageMeter
from softudc.model.hoststate import HostLoad, VmUsage, parse


@dataclass(frozen=True)
class Nic:
    vnet: int
    tap: str | None


def dom(name: str, state: str = "running", cpu: int = 5 * 10**9, taps: tuple[str, ...] = ("tap1",),
        **extra: Any) -> dict[str, Any]:
    return {"name": name, "state": state, "cpu_time_ns": cpu, "memory_kib": 512 * 1024,
            "net": [{"name": t, "rx_bytes": 100, "tx_bytes": 200} for t in taps], **extra}


def test_active_managed_domains_with_their_vnet_bytes() -> None:
    lookups: list[str] = []

    def nics(name: str) -> list[Nic]:
        lookups.append(name)
        return [Nic(7, "tap1"), Nic(0, "tap9")]  # tap9: not on a VNET (an admin port)

    m = UsageMeter(nics)
    out = m.sample([dom("web--a", taps=("tap1", "tap9"), uuid="u1", id=3), dom("web--b", "shutoff"), dom("other")])
    assert out == {"web--a": {"cpu_ns": 5 * 10**9, "memory_mib": 512.0, "id": "u1/3",
                              "net": [{"vnet": 7, "rx_bytes": 100, "tx_bytes": 200}]}}
    m.sample([dom("web--a", "paused", taps=("tap1", "tap9"))])
    assert lookups == ["web--a"]  # the taps were known
    m.sample([dom("web--a", taps=("tap2",))])
    assert lookups == ["web--a", "web--a"]  # a new tap: read again
    m.sample([])
    assert m.taps == {}


def test_a_failing_nic_lookup_leaves_the_bytes_for_later() -> None:
    def nics(name: str) -> list[Nic]:
        raise RuntimeError("domain not found")

    assert "net" not in UsageMeter(nics).sample([dom("web--a")])["web--a"]


def test_the_load_carries_usage_the_contract_accepts() -> None:
    load = LoadMeter(lambda: [dom("web--a")], nics=lambda n: [Nic(3, "tap1")]).sample()
    assert parse(HostLoad, load).usage is not None and load["usage"]["web--a"]["net"][0]["vnet"] == 3


@given(st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["web--a", "web--b", "x", "db--c"]),
    "state": st.sampled_from(["running", "paused", "shutoff", "crashed"]),
    "cpu_time_ns": st.one_of(st.none(), st.integers(-5, 10**15)),
    "memory_kib": st.one_of(st.none(), st.integers(-5, 10**10)),
    "net": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["tap1", "tap2", None]),
                                           "rx_bytes": st.integers(-1, 10**12),
                                           "tx_bytes": st.integers(-1, 10**12)}), max_size=3)}), max_size=6))
def test_whatever_libvirt_says_the_usage_follows_the_contract(stats: list[dict[str, Any]]) -> None:
    for row in UsageMeter(lambda n: [Nic(1, "tap1")]).sample(stats).values():
        parse(VmUsage, row)
