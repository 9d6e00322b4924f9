"""ESP SA lifecycle: restarts (R1), changed secrets and deleted VNETs (R7), extended sequence
numbers for late joiners (R8), spoofed sources (R17). The audit's repros, as regression tests."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.vnet.esp_sa import ESN_LOOKAHEAD, SEQ_LAST, EspDrop, SecurityAssociations
from softudc.security.keys import VnetKeys, derive_esp_key
from softudc.security.seqstore import SequenceStore, key_id
from softudc.wire import esp

P = bytes([0x30, 5]) + bytes(60)
K = VnetKeys("conf", {1: bytes(range(32))}, 1)
A, B = "10.0.0.1", "10.0.0.2"


def sender(path: Path | None, keys: VnetKeys = K, block: int = 1000) -> SecurityAssociations:
    tx = SecurityAssociations(A, SequenceStore(path, block=block) if path else None)
    tx.set_keys(5, keys)
    return tx


def receiver(keys: VnetKeys = K, **kw: int) -> SecurityAssociations:
    rx = SecurityAssociations(B, **kw)  # type: ignore[arg-type]
    rx.set_keys(5, keys)
    return rx


def sealed(tx: SecurityAssociations, vnet: int = 5) -> bytes:
    """One packet of P from `tx`, as the bytes a receiver gets (the native engine seals into a
    bytearray, which `open` is not declared to take)."""
    return bytes(tx.seal(vnet, P))


def seq_of(packet: bytes) -> tuple[int, int]:
    return int.from_bytes(packet[:4], "big"), int.from_bytes(packet[8:16], "big")  # SPI, IV = full sequence


@pytest.mark.adversarial
def test_r1_a_restarted_sender_never_repeats_a_packet_and_its_peer_drops_nothing(tmp_path: Path) -> None:
    """The audit's R1 repro: 5,000 packets, a restart (a new SecurityAssociations), 3,000 more."""
    path = tmp_path / "esp-seq.json"
    tx, rx = sender(path), receiver()
    first = [sealed(tx) for _ in range(5000)]
    for x in first:
        rx.open(x, A)
    tx2 = sender(path)  # the gatekeeper restarted: same keys, same address
    after = [sealed(tx2) for _ in range(3000)]
    assert after[0] != first[0]
    assert not {seq_of(x) for x in first} & {seq_of(x) for x in after}  # no (SPI, sequence) twice under the key
    assert min(seq_of(x)[1] for x in after) > max(seq_of(x)[1] for x in first)
    opened = [rx.open(x, A) for x in after]  # every one accepted at once: nothing dropped
    assert len(opened) == 3000 and all(v == 5 for v, _ in opened)


def test_r1_numbers_are_on_disk_before_they_are_used(tmp_path: Path) -> None:
    path = tmp_path / "esp-seq.json"
    tx = sender(path, block=100)
    store = tx.seq_store
    for n in range(1, 251):
        packet = sealed(tx)
        mark = max(dict(json.loads(path.read_text())["marks"]).values())
        assert seq_of(packet)[1] == n <= mark  # whatever crashes now, n is below the mark on disk
    assert store.writes == 3  # one write (and fsync) per block of 100, not per packet


def test_r1_the_same_key_installed_again_continues_its_count_in_one_process() -> None:
    """A VNET deleted and made again (a VM left and came back) gets the same key: still no reuse."""
    tx = sender(None)
    before = [sealed(tx) for _ in range(10)]
    tx.set_keys(5, None)
    tx.set_keys(5, K)
    assert seq_of(sealed(tx))[1] > max(seq_of(x)[1] for x in before)


def test_r1_a_corrupt_mark_file_is_kept_aside_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "esp-seq.json"
    path.write_text("{not json")
    SequenceStore(path)
    [aside] = tmp_path.glob("esp-seq.json.corrupt-*")
    assert aside.read_text() == "{not json" and not path.exists()
    assert "rotate" in caplog.text


def test_r1_the_counter_stops_rather_than_wrap() -> None:
    tx = sender(None)
    tx.seq_store._marks[key_id(tx._out[5].key)] = SEQ_LAST - 1  # every block before the last one used
    assert seq_of(sealed(tx))[1] == SEQ_LAST
    with pytest.raises(EspDrop, match="esp_seq_exhausted"):
        tx.seal(5, P)


def test_r1_a_mark_that_cannot_be_written_drops_the_packet_instead(tmp_path: Path) -> None:
    tx = sender(tmp_path / "gone" / "esp-seq.json")  # the directory does not exist: the write fails
    with pytest.raises(EspDrop, match="esp_seq_store_failed"):
        tx.seal(5, P)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=8), st.integers(1, 16))
def test_r1_no_sequence_repeats_across_any_run_of_restarts(runs: list[int], block: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "esp-seq.json"
        rx = receiver()
        seen: set[tuple[int, int]] = set()
        for count in runs:
            tx = sender(path, block=block)
            for _ in range(count):
                packet = sealed(tx)
                assert seq_of(packet) not in seen
                seen.add(seq_of(packet))
                rx.open(packet, A)  # in order after a restart: always accepted


@pytest.mark.adversarial
def test_r7_a_new_secret_under_the_same_epoch_replaces_the_sas() -> None:
    """The audit's esp_reuse repro: VNET 3 with secret A, then B under the same epoch."""
    ka, kb = VnetKeys("conf", {1: b"A" * 32}, 1), VnetKeys("conf", {1: b"B" * 32}, 1)
    h1 = SecurityAssociations(A)
    h1.set_keys(3, ka)
    peer_b, former_a = SecurityAssociations(B), SecurityAssociations("10.0.0.3")
    peer_b.set_keys(3, kb)
    former_a.set_keys(3, ka)
    h1.set_keys(3, kb)
    frame = sealed(h1, 3)
    assert peer_b.open(frame, A)[0] == 3
    with pytest.raises(EspDrop, match="esp_auth_failed"):
        former_a.open(frame, A)


def test_r7_a_receivers_sa_is_rebuilt_when_the_secret_changes_under_its_epoch() -> None:
    ka, kb = VnetKeys("conf", {1: b"A" * 32}, 1), VnetKeys("conf", {1: b"B" * 32}, 1)
    tx, rx = SecurityAssociations(A), SecurityAssociations(B)
    for h in (tx, rx):
        h.set_keys(3, ka)
    for _ in range(3):
        rx.open(sealed(tx, 3), A)
    for h in (tx, rx):
        h.set_keys(3, kb)
    assert rx.describe(3)["inbound_sas"] == 0
    packet = sealed(tx, 3)
    assert seq_of(packet)[1] == 1  # a new key: its own count, from 1
    assert rx.open(packet, A)[0] == 3  # an SA kept from A would call this a replay, or fail the tag


def test_r7_removing_a_vnets_keys_removes_its_sas() -> None:
    tx, rx = sender(None), receiver()
    rx.open(sealed(tx), A)
    assert rx.describe(5)["inbound_sas"] == 1
    rx.set_keys(5, None)
    assert rx.describe(5) == {"security": "none", "epochs": [], "send_epoch": None, "key_fingerprint": None,
                              "spi": None, "inbound_sas": 0}
    with pytest.raises(EspDrop, match="esp_unknown_spi"):
        rx.open(sealed(tx), A)


def test_r7_a_level_change_under_the_same_secret_rebuilds_the_outbound_sa() -> None:
    tx = sender(None)
    tx.set_keys(5, VnetKeys("auth", {1: bytes(range(32))}, 1))
    rx = receiver(VnetKeys("auth", {1: bytes(range(32))}, 1))
    assert rx.open(sealed(tx), A)[0] == 5


@pytest.mark.adversarial
def test_r8_a_late_joiner_follows_a_sender_past_2_to_the_32() -> None:
    """The audit's esn_late repro: sender counter at 2^32 + 5, fresh receiver: 2,000 packets."""
    tx = sender(None)
    sa = tx._out[5]
    sa.next_seq = sa.reserved = (1 << 32) + 5
    sa.reserved += 10_000
    rx = receiver()
    for _ in range(2000):
        assert rx.open(sealed(tx), A)[0] == 5
    assert rx.counts["esp_esn_resync"] == 1  # once found, the window carries the high half


def test_r8_a_receiver_that_saw_only_part_of_the_traffic_catches_up() -> None:
    """The sender's counter is shared by all its destinations: 2^32 packets went elsewhere."""
    tx, rx = sender(None), receiver()
    rx.open(sealed(tx), A)
    sa = tx._out[5]
    sa.next_seq += 3 << 32
    sa.reserved = sa.next_seq + 100
    assert rx.open(sealed(tx), A)[0] == 5


@pytest.mark.adversarial
def test_r8_the_lookahead_is_bounded_for_forged_packets() -> None:
    tx, rx = sender(None), receiver()
    rx.open(sealed(tx), A)
    forged = bytearray(tx.seal(5, P))
    forged[-1] ^= 1
    with mock.patch.object(esp, "open_", wraps=esp.open_) as opened, pytest.raises(EspDrop):
        rx.open(bytes(forged), A)
    assert opened.call_count == 1 + ESN_LOOKAHEAD
    far = sender(None)
    far._out[5].next_seq = far._out[5].reserved = (ESN_LOOKAHEAD + 1 << 32) + 7
    with pytest.raises(EspDrop, match="esp_auth_failed"):  # beyond the lookahead: key rotation's job
        receiver().open(sealed(far), A)


@pytest.mark.adversarial
def test_r17_spoofed_sources_leave_no_sa_behind() -> None:
    """The audit's esp_spoof repro: 20,000 forged packets from distinct sources."""
    tx, rx = sender(None), receiver()
    outsider = SecurityAssociations(A)
    outsider.set_keys(5, VnetKeys("conf", {1: b"x" * 32}, 1))
    for i in range(20_000):
        with pytest.raises(EspDrop, match="esp_auth_failed"):
            rx.open(sealed(outsider), f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert rx.inbound_count() == 0
    assert rx.open(sealed(tx), A)[0] == 5 and rx.inbound_count() == 1


def test_r17_the_table_is_a_bounded_lru_and_evictions_are_counted() -> None:
    rx = receiver(max_inbound=100)
    senders = []
    for i in range(250):
        s = SecurityAssociations(f"10.1.{i >> 8}.{i & 255}")
        s.set_keys(5, K)
        senders.append(s)
        rx.open(sealed(s), s.local_addr)
        assert rx.inbound_count() <= 100
    assert rx.counts["esp_sa_evicted"] == 150
    last = senders[-1]
    assert rx.open(sealed(last), last.local_addr)[0] == 5  # the recent ones are still there


@pytest.mark.adversarial
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([A, "10.9.9.9", "::1", "not-an-address"]))
def test_r17_any_bytes_from_any_source_only_ever_drop(data: bytes, src: str) -> None:
    rx = receiver()
    spi = (0x10050001).to_bytes(4, "big")  # our SPI for VNET 5, epoch 1: goes as far as the tag check
    for buf in (data, spi + data):
        with contextlib.suppress(EspDrop):
            rx.open(buf, src)
    assert rx.inbound_count() == 0


@pytest.mark.adversarial
def test_r17_a_vnet_with_members_derives_no_key_for_anyone_else() -> None:
    tx, rx = sender(None), receiver()
    rx.set_members(5, (A,))
    packet = sealed(tx)
    with mock.patch("gatekeeper.vnet.esp_sa.derive_esp_key", wraps=derive_esp_key) as derive:
        for i in range(1000):
            with pytest.raises(EspDrop, match="esp_not_member"):
                rx.open(packet, f"10.7.{i >> 8}.{i & 255}")
        assert derive.call_count == 0
        assert rx.open(packet, A)[0] == 5
    assert rx.inbound_count() == 1
    rx.set_members(5, ("10.0.0.9",))  # A left the VNET: its SA goes with it
    assert rx.inbound_count() == 0
    rx.set_members(5, None)  # no list: anyone with the key
    assert rx.open(sealed(tx), A)[0] == 5


def test_r1_two_sas_for_one_key_never_share_a_number() -> None:
    """A VNET deleted and made again while a send was in flight: the old SA object may still
    seal; its blocks and the new one's are disjoint."""
    tx = sender(None, block=10)
    old = tx._out[5]
    sent = [seq_of(sealed(tx))[1] for _ in range(5)]
    tx.set_keys(5, None)
    tx.set_keys(5, K)
    for _ in range(30):  # both objects keep going, across several blocks each
        sent.append(seq_of(sealed(tx))[1])
        sent.append(tx._next_seq(old))
    assert len(sent) == len(set(sent))


def test_r17_evictions_and_the_table_size_are_metrics() -> None:
    from types import SimpleNamespace

    from gatekeeper.metrics import GatekeeperCollector

    rx = receiver(max_inbound=2)
    for i in range(5):
        s = SecurityAssociations(f"10.2.0.{i + 1}")
        s.set_keys(5, K)
        rx.open(sealed(s), s.local_addr)
    service = SimpleNamespace(forwarder=SimpleNamespace(sas=rx))
    samples = {(s.name, s.labels.get("event")): s.value
               for m in GatekeeperCollector(service)._esp("h1")  # type: ignore[arg-type]
               for s in m.samples}
    assert samples[("softudc_esp_sa_events_total", "sa_evicted")] == 3
    assert samples[("softudc_esp_inbound_sas", None)] == 2
    engines = [s.labels["engine"] for m in GatekeeperCollector(service)._esp("h1")  # type: ignore[arg-type]
               for s in m.samples if s.name == "softudc_vnet_esp_engine"]
    assert engines == [rx.engine] and rx.engine in ("native", "python")


def test_r1_a_key_pruned_from_the_store_while_in_use_still_never_goes_back() -> None:
    tx = SecurityAssociations(A, SequenceStore(None, block=10, max_entries=1))
    tx.set_keys(5, K)
    tx.set_keys(6, K)
    sent = [seq_of(sealed(tx))[1] for _ in range(5)]
    seq_of(sealed(tx, 6))  # VNET 6's key takes the only entry: VNET 5's mark is pruned
    sent += [seq_of(sealed(tx))[1] for _ in range(20)]
    assert sent == sorted(sent) and len(set(sent)) == len(sent)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, ESN_LOOKAHEAD), st.integers(1, (1 << 32) - 1), st.integers(1, 5))
def test_r8_a_fresh_receiver_follows_any_sender_within_the_lookahead(high: int, low: int, n: int) -> None:
    tx = sender(None)
    sa = tx._out[5]
    sa.next_seq = (high << 32) + low
    sa.reserved = sa.next_seq + n
    rx = receiver()
    for _ in range(n):
        assert rx.open(sealed(tx), A)[0] == 5
