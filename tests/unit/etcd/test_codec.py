"""The gateway's wire form without I/O: base64, range ends, key-values, txn builders (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from softudc.etcd.codec import (
    KV,
    b64,
    cmp_mod,
    decode_kv,
    decode_responses,
    encode_kv,
    op_delete,
    op_range,
    prefix_end,
    unb64,
)

keys = st.binary(min_size=1, max_size=40)


@given(st.binary(max_size=200))
def test_base64_round_trips(data: bytes) -> None:
    assert unb64(b64(data)) == data


@given(keys, keys)
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix: bytes, other: bytes) -> None:
    end = prefix_end(prefix)
    if end == b"\0":  # only 0xff bytes: every key from the prefix on
        assert set(prefix) == {0xFF}
        return
    assert prefix < end
    assert (prefix <= other < end) == other.startswith(prefix)


@given(st.builds(KV, key=keys, value=st.binary(max_size=50), create_revision=st.integers(0, 2**63 - 1),
                 mod_revision=st.integers(0, 2**63 - 1), version=st.integers(0, 2**63 - 1),
                 lease=st.integers(0, 2**63 - 1)))
def test_kv_round_trips_through_the_gateway_form(kv: KV) -> None:
    assert decode_kv(encode_kv(kv)) == kv


@given(st.text(max_size=20))
def test_garbage_base64_is_an_error_not_garbage(text: str) -> None:
    try:
        data = unb64(text)
    except ValueError:
        return
    assert unb64(b64(data)) == data


@given(st.lists(st.fixed_dictionaries({"key": st.binary(min_size=1, max_size=10), "value": st.binary(max_size=10)}),
                max_size=3))
def test_a_txn_range_response_decodes_to_kvs(raw: list[dict[str, bytes]]) -> None:
    kvs = [{"key": b64(r["key"]), "value": b64(r["value"])} for r in raw]
    wire: list[dict[str, Any]] = [{"response_range": {"kvs": kvs, "count": str(len(raw))}}, {"response_put": {}}]
    got = decode_responses(wire)
    assert [kv.key for kv in got[0]["response_range"]["kvs"]] == [r["key"] for r in raw]
    assert got[0]["response_range"]["count"] == len(raw) and got[1] == {"response_put": {}}


def test_builders_speak_the_gateway_s_json() -> None:
    assert cmp_mod(b"k", "EQUAL", 3) == {"key": "aw==", "target": "MOD", "result": "EQUAL", "mod_revision": "3"}
    assert op_delete(b"a", prefix=True) == {"request_delete_range": {"key": "YQ==", "range_end": "Yg=="}}
    assert op_range(b"a", limit=2, count_only=True)["request_range"] == {"key": "YQ==", "limit": "2",
                                                                          "count_only": True}
