"""Confirmations from outside the forwarding threads (the bridge, on the eBPF path): `saw` and `aged`."""

from __future__ import annotations

from gatekeeper.vnet.varp_cache import State, VarpCache, VarpTimers

MAC = bytes.fromhex("525400000001")
OTHER = bytes.fromhex("525400000002")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[VarpCache, Clock]:
    clock = Clock()
    return VarpCache(clock, VarpTimers(ttl=60.0, stale_ttl=60.0)), clock


def test_a_mac_the_bridge_keeps_seeing_never_goes_stale() -> None:
    cache, clock = make()
    cache.announce(7, MAC, "10.0.0.2")
    for _ in range(10):  # 300 s, more than ttl + stale_ttl twice over
        clock.now += 30
        cache.saw(7, MAC, 0.5)  # a frame from it half a second ago
        cache.tick()
        assert cache.state_of(7, MAC) is State.REACHABLE
    assert cache.fdb[(7, MAC)] == "10.0.0.2"
    assert cache.entries()[0]["age"] == 0.5


def test_without_it_the_entry_goes_stale_then_is_removed() -> None:
    cache, clock = make()
    cache.announce(7, MAC, "10.0.0.2")
    clock.now += 60
    cache.tick()
    assert cache.state_of(7, MAC) is State.STALE
    clock.now += 60
    cache.tick()
    assert cache.state_of(7, MAC) is None and (7, MAC) not in cache.fdb


def test_a_frame_older_than_the_last_confirmation_confirms_nothing() -> None:
    cache, clock = make()
    cache.announce(7, MAC, "10.0.0.2")
    clock.now += 61
    cache.tick()
    cache.saw(7, MAC, 62.0)  # seen before the ANNOUNCE: says nothing about now
    cache.tick()
    assert cache.state_of(7, MAC) is State.STALE


def test_a_stale_entry_seen_again_is_reachable_and_leaves_the_stale_set() -> None:
    cache, clock = make()
    cache.announce(7, MAC, "10.0.0.2")
    clock.now += 90
    cache.tick()
    assert (7, MAC) in cache.stale
    cache.saw(7, MAC, 1.0)
    cache.tick()
    assert cache.state_of(7, MAC) is State.REACHABLE and (7, MAC) not in cache.stale


def test_saw_keeps_the_latest_stamp() -> None:
    cache, clock = make()
    cache.saw(7, MAC, 1.0)
    cache.saw(7, MAC, 5.0)  # an older one (another reader) does not win
    assert cache.seen[(7, MAC)] == clock.now - 1.0


def test_aged_names_resolved_entries_of_the_asked_vnets_that_are_old_enough() -> None:
    cache, clock = make()
    cache.announce(7, MAC, "10.0.0.2")
    cache.announce(8, MAC, "10.0.0.2")  # a VNET not asked for
    clock.now += 40
    cache.announce(7, OTHER, "10.0.0.3")  # young
    cache.miss(7, bytes.fromhex("525400000003"), b"f")  # INCOMPLETE: nothing to confirm
    assert cache.aged({7}, 30.0) == {7: {MAC}}
    clock.now += 50  # MAC STALE now: still named (the bridge may bring it back)
    cache.tick()
    assert cache.aged({7}, 30.0) == {7: {MAC, OTHER}}
    assert cache.aged(set(), 0.0) == {}
