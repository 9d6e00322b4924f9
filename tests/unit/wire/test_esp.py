"""ESP: our packets open in scapy's SecurityAssociation and scapy's open in ours (conf = AES-GCM,
auth = AES-GMAC, 64-bit extended sequence numbers), and garbage raises only WireError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw

from softudc.wire import WireError
from softudc.wire.esp import AuthError, EspKey, open_, peek, seal

KEY, SALT = bytes(range(32)), b"\x01\x02\x03\x04"
SPI = 0x100A0001
PAYLOAD = b"\x30\x0a" + bytes.fromhex("020000000002" "020000000001" "0800") + b"inner IPv4 packet"


def scapy_sa(level: str, seq_num: int = 1) -> SecurityAssociation:
    algo = "AES-GCM" if level == "conf" else "AES-NULL-GMAC"
    return SecurityAssociation(ESP, spi=SPI, crypt_algo=algo, crypt_key=KEY + SALT,  # type: ignore[no-untyped-call]
                               esn_en=True, esn=seq_num >> 32, seq_num=seq_num & 0xFFFFFFFF,
                               nat_t_header=UDP(sport=4500, dport=4500))


@pytest.mark.parametrize("level", ["conf", "auth"])
@pytest.mark.parametrize("seq", [1, 77, (5 << 32) | 9])
def test_scapy_opens_what_we_seal(level: str, seq: int) -> None:
    packet = seal(EspKey(level, KEY, SALT), SPI, seq, PAYLOAD)  # type: ignore[arg-type]
    outer = IP(src="10.100.0.11", dst="10.100.0.12") / UDP(sport=4500, dport=4500) / ESP(packet)
    plain = scapy_sa(level, seq).decrypt(IP(bytes(outer)))  # type: ignore[no-untyped-call]
    assert plain[IP].proto == 97 and bytes(plain[IP].payload) == PAYLOAD


@pytest.mark.parametrize("level", ["conf", "auth"])
def test_we_open_what_scapy_seals(level: str) -> None:
    seq = (2 << 32) | 41
    sa = scapy_sa(level, seq)
    pkt = sa.encrypt(IP(src="10.100.0.11", dst="10.100.0.12", proto=97) / Raw(PAYLOAD))  # type: ignore[no-untyped-call]
    esp_bytes = bytes(pkt[UDP].payload)
    assert open_(EspKey(level, KEY, SALT), esp_bytes, seq) == PAYLOAD  # type: ignore[arg-type]


def test_conf_hides_the_payload_and_auth_does_not() -> None:
    conf = seal(EspKey("conf", KEY, SALT), SPI, 1, PAYLOAD)
    auth = seal(EspKey("auth", KEY, SALT), SPI, 1, PAYLOAD)
    assert b"inner IPv4 packet" not in conf and b"inner IPv4 packet" in auth


@pytest.mark.parametrize("level", ["conf", "auth"])
def test_any_flipped_bit_fails_authentication(level: str) -> None:
    key = EspKey(level, KEY, SALT)  # type: ignore[arg-type]
    packet = bytearray(seal(key, SPI, 5, PAYLOAD))
    for i in range(8, len(packet)):  # after SPI and seq (those change the SA lookup / window)
        for bit in (0, 7):
            bad = bytearray(packet)
            bad[i] ^= 1 << bit
            with pytest.raises(AuthError):
                open_(key, bytes(bad), 5)


def test_wrong_key_or_wrong_high_bits_fail() -> None:
    packet = seal(EspKey("conf", KEY, SALT), SPI, (1 << 32) | 5, PAYLOAD)
    with pytest.raises(AuthError):
        open_(EspKey("conf", bytes(32), SALT), packet, (1 << 32) | 5)
    with pytest.raises(AuthError):
        open_(EspKey("conf", KEY, SALT), packet, 5)  # same low bits, other subspace


@given(st.binary(max_size=120))
def test_garbage_raises_only_wire_error(buf: bytes) -> None:
    key = EspKey("conf", KEY, SALT)
    try:
        h = peek(buf)
        open_(key, buf, h.seq_low)
    except WireError:
        pass


@given(st.binary(min_size=0, max_size=1500), st.sampled_from(["conf", "auth"]), st.integers(1, 2**64 - 1))
def test_round_trip(payload: bytes, level: str, seq: int) -> None:
    key = EspKey(level, KEY, SALT)  # type: ignore[arg-type]
    packet = seal(key, SPI, seq, payload)
    assert len(packet) % 4 == 0
    assert open_(key, packet, seq) == payload
