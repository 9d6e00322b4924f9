from __future__ import annotations

import pytest

from gatekeeper.vnet.esp_sa import EspDrop, SecurityAssociations
from softudc.security.keys import VnetKeys, parse_spi, spi_for

PAYLOAD = b"\x30\x0a" + bytes(14) + b"frame"
A, B = "10.100.0.11", "10.100.0.12"


def hosts(level: str = "conf", epochs: dict[int, bytes] | None = None, send: int = 1) -> tuple[
        SecurityAssociations, SecurityAssociations]:
    epochs = epochs or {1: b"k" * 32}
    a, b = SecurityAssociations(A), SecurityAssociations(B)
    for h in (a, b):
        h.set_keys(10, VnetKeys(level, dict(epochs), send))  # type: ignore[arg-type]
    return a, b


def sealed(a: SecurityAssociations) -> bytes:
    """One packet of PAYLOAD on VNET 10 from `a`, as the bytes a receiver gets (the native engine
    seals into a bytearray, which `open` is not declared to take)."""
    return bytes(a.seal(10, PAYLOAD))


def test_round_trip_and_replay_is_refused() -> None:
    a, b = hosts()
    packet = sealed(a)
    assert b.open(packet, A) == (10, PAYLOAD)
    with pytest.raises(EspDrop, match="esp_replay"):
        b.open(packet, A)


def test_the_sender_address_is_part_of_the_key() -> None:
    a, b = hosts()
    packet = sealed(a)
    with pytest.raises(EspDrop, match="esp_auth_failed"):
        b.open(packet, "10.100.0.99")  # the same bytes claimed by another host


def test_a_host_without_the_secret_cannot_forge() -> None:
    _, b = hosts()
    outsider = SecurityAssociations(A)
    outsider.set_keys(10, VnetKeys("conf", {1: b"x" * 32}, 1))
    with pytest.raises(EspDrop, match="esp_auth_failed"):
        b.open(sealed(outsider), A)


def test_rotation_overlaps_then_retires_the_old_epoch() -> None:
    a, b = hosts(epochs={1: b"1" * 32})
    old = sealed(a)
    late_old = sealed(a)
    for h in (a, b):  # step 1: everyone learns epoch 2, still sending with 1
        h.set_keys(10, VnetKeys("conf", {1: b"1" * 32, 2: b"2" * 32}, 1))
    assert b.open(old, A)[0] == 10
    a.set_keys(10, VnetKeys("conf", {1: b"1" * 32, 2: b"2" * 32}, 2))  # step 2: a sends with 2
    new = sealed(a)
    assert parse_spi(int.from_bytes(new[:4], "big")) == (10, 2)
    assert b.open(new, A)[0] == 10
    assert b.open(late_old, A)[0] == 10  # in flight under the old key: still accepted
    b.set_keys(10, VnetKeys("conf", {2: b"2" * 32}, 2))  # step 3: epoch 1 retired
    with pytest.raises(EspDrop, match="esp_unknown_spi"):
        b.open(a_sealed_with_epoch_1(), A)


def a_sealed_with_epoch_1() -> bytes:
    a = SecurityAssociations(A)
    a.set_keys(10, VnetKeys("conf", {1: b"1" * 32}, 1))
    return sealed(a)


def test_keeping_the_send_epoch_keeps_the_sequence() -> None:
    a, b = hosts()
    first = sealed(a)
    a.set_keys(10, VnetKeys("conf", {1: b"k" * 32, 2: b"z" * 32}, 1))
    second = sealed(a)
    assert int.from_bytes(second[4:8], "big") == int.from_bytes(first[4:8], "big") + 1
    assert b.open(second, A) and b.open(first, A)


def test_bad_keys_are_refused() -> None:
    a = SecurityAssociations(A)
    with pytest.raises(ValueError, match="at least 16"):
        a.set_keys(10, VnetKeys("conf", {1: b"short"}, 1))
    with pytest.raises(ValueError, match="send epoch 3"):
        a.set_keys(10, VnetKeys("conf", {1: b"k" * 32}, 3))
    assert spi_for(4094, 65535) >> 28 == 1
