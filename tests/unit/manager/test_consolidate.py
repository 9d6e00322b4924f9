"""Consolidation decisions: standby only after low utilisation held over the long window, never
below min_ready, never a host in maintenance, and only when the others stay at the band's middle
(so it never wakes straight away); wake only after high utilisation held, the biggest standby
host first; nothing during the quiet time after an action."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.manager.consolidate import Band, HostUse, Memory, decide, utilisation

BAND = Band(low=0.3, high=0.75, low_hold_s=600, high_hold_s=60, quiet_s=300, min_ready=2)


def host(name: str, state: str = "ready", cpu: float = 0.0, vms: int = 0, **kw: float | bool) -> HostUse:
    return HostUse(name, state, cpu_cap=8, mem_cap=8192, cpu_short=cpu, cpu_long=cpu, vms=vms, **kw)  # type: ignore[arg-type]


def test_low_load_held_long_enough_puts_the_least_useful_host_in_standby() -> None:
    hosts = [host("h1", cpu=1, vms=3), host("h2", cpu=0.5, vms=1), host("h3", cpu=0.2, vms=1)]
    d, mem = decide(hosts, BAND, Memory(), 1000)
    assert d.action == "none" and "not yet" in d.reason and mem.low_since == 1000
    d, mem = decide(hosts, BAND, mem, 1599)
    assert d.action == "none"
    d, mem = decide(hosts, BAND, mem, 1600)
    assert (d.action, d.host) == ("standby", "h3") and "under 30%" in d.reason, d
    assert mem == Memory(last_action=1600)
    assert decide(hosts, BAND, mem, 1700)[0].reason.startswith("quiet")


def test_never_under_min_ready_nor_a_maintenance_host_nor_when_the_rest_would_be_too_busy() -> None:
    two = [host("h1", cpu=0.1), host("h2", cpu=0.1), host("h3", "standby")]
    assert decide(two, BAND, Memory(low_since=0), 1000)[0].action == "none"
    kept = [host("h1", cpu=0.1, vms=2), host("h2", cpu=0.1, vms=2), host("h3", vms=0, maintenance=True)]
    d = decide(kept, BAND, Memory(low_since=0), 1000)[0]
    assert d.host != "h3"
    mem_heavy = [HostUse(f"h{i}", "ready", 8, 1000, mem_long=280, mem_short=280) for i in range(2)]  # 28 % each
    d = decide(mem_heavy, Band(min_ready=1), Memory(low_since=0), 1000)[0]
    assert d.action == "none" and "would be at 56%, over 52%" in d.reason, d


def test_high_load_held_wakes_the_biggest_standby_host_not_one_in_maintenance() -> None:
    hosts = [host("h1", cpu=7), host("h2", cpu=7), host("h3", "standby"), host("h0", "standby", maintenance=True),
             HostUse("h4", "standby", 16, 8192)]
    d, mem = decide(hosts, BAND, Memory(), 0)
    assert d.action == "none" and mem.high_since == 0
    d, mem = decide(hosts, BAND, mem, 60)
    assert (d.action, d.host) == ("wake", "h4"), d
    d = decide([*hosts[:2], hosts[3]], BAND, Memory(high_since=0), 100)[0]
    assert d.action == "none" and "no host is in standby" in d.reason


def test_a_bad_band_is_refused() -> None:
    with pytest.raises(ValueError, match=r"low 0\.8 and high 0\.5"):
        Band(low=0.8, high=0.5)


hosts_st = st.lists(st.builds(
    HostUse, name=st.sampled_from([f"h{i}" for i in range(8)]), state=st.sampled_from(["ready", "standby", "down"]),
    cpu_cap=st.floats(1, 64), mem_cap=st.floats(512, 65536), cpu_short=st.floats(0, 64), cpu_long=st.floats(0, 64),
    mem_short=st.floats(0, 65536), mem_long=st.floats(0, 65536), vms=st.integers(0, 20), maintenance=st.booleans()),
    max_size=8, unique_by=lambda h: h.name)


@given(hosts_st, st.floats(0, 5000), st.none() | st.floats(0, 5000), st.none() | st.floats(0, 5000),
       st.none() | st.floats(0, 5000))
def test_decisions_keep_the_rules(hosts: list[HostUse], now: float, low: float | None, high: float | None,
                                  last: float | None) -> None:
    memory = Memory(low_since=min(low, now) if low is not None else None,
                    high_since=min(high, now) if high is not None else None,
                    last_action=min(last, now) if last is not None else None)
    d, after = decide(hosts, BAND, memory, now)
    by_name = {h.name: h for h in hosts}
    if memory.last_action is not None and now - memory.last_action < BAND.quiet_s:
        assert d.action == "none"
    if d.action == "standby":
        chosen = by_name[d.host or ""]
        assert chosen.state == "ready" and not chosen.maintenance
        assert utilisation(hosts, "long") < BAND.low
        assert sum(h.state == "ready" for h in hosts) > BAND.min_ready
        rest = [h if h.name != chosen.name else HostUse(h.name, "standby", h.cpu_cap, h.mem_cap) for h in hosts]
        spread = [h if h.name != min(n.name for n in rest if n.state == "ready") else
                  HostUse(h.name, h.state, h.cpu_cap, h.mem_cap, h.cpu_short, h.cpu_long + chosen.cpu_long,
                          h.mem_short, h.mem_long + chosen.mem_long) for h in rest]
        assert utilisation(spread, "long") <= (BAND.low + BAND.high) / 2 + 1e-9  # it would not wake again
        assert after.last_action == now
    if d.action == "wake":
        chosen = by_name[d.host or ""]
        assert chosen.state == "standby" and not chosen.maintenance and utilisation(hosts, "short") > BAND.high
