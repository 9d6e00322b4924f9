"""The client's fail-over and answer checks against scripted endpoints (httpx.MockTransport):
what moves to the next endpoint, what is an error naming the endpoint, what is retryable."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import softudc.etcd.client as client_module
from softudc.etcd.client import EtcdClient, EtcdError

A, B = "http://a:2379", "http://b:2379"
OK = {"header": {"revision": "7"}, "kvs": [], "count": "0"}


def scripted(answer: Callable[[httpx.Request], httpx.Response], endpoints: tuple[str, ...] = (A, B),
             timeout: float = 0.5) -> tuple[EtcdClient, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.scheme}://{request.url.host}:{request.url.port}")
        return answer(request)

    c = EtcdClient(list(endpoints), timeout=timeout)
    c._http.close()
    c._http = httpx.Client(transport=httpx.MockTransport(handler))
    return c, seen


def test_a_refused_connection_moves_on_and_the_good_endpoint_is_remembered() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=OK)

    c, seen = scripted(answer)
    assert c.put(b"k", b"v") == 7 and c.range(b"k")[0] == 7
    assert seen == [A, B, B]  # the write was never sent to a: safe to send to b


def test_a_write_that_broke_off_is_not_repeated_and_says_so() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    c, seen = scripted(answer)
    with pytest.raises(EtcdError, match=r"http://a:2379/v3/kv/put failed after the request was sent.*unknown") as e:
        c.put(b"k", b"v")
    assert e.value.retryable and seen == [A]
    seen.clear()
    with pytest.raises(EtcdError, match="no etcd endpoint answered /v3/kv/range"):
        c.range(b"k")  # a read is safe to repeat: every endpoint, round again until the timeout
    assert seen[:2] == [B, A] and len(seen) >= 2


def test_unavailable_moves_a_read_on_but_not_a_write() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            return httpx.Response(503, json={"error": "etcdserver: no leader", "message": "etcdserver: no leader",
                                             "code": 14})
        return httpx.Response(200, json=OK)

    c, seen = scripted(answer)
    assert c.range(b"k")[0] == 7 and seen == [A, B]
    c._remember(0)
    with pytest.raises(EtcdError, match="a:2379/v3/kv/put refused: etcdserver: no leader") as e:
        c.put(b"k", b"v")
    assert e.value.retryable and e.value.code == 14
    assert c.endpoints[c._good] == B  # the next call starts elsewhere


def test_an_answer_over_the_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_BODY", 100)
    c, _ = scripted(lambda r: httpx.Response(200, content=b"{" + b" " * 200 + b"}"))
    with pytest.raises(EtcdError, match="more than 100 bytes"):
        c.range(b"k")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["kvs", "count", "key", "value", "header", "revision", "error",
                                                "code", "message", "succeeded", "responses", "response_range",
                                                "ID", "TTL", "result", "members"]), inner, max_size=4),
                           max_leaves=10)
answers = st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode())
BODY: list[bytes] = [b""]
GARBAGE, _ = scripted(lambda r: httpx.Response(200, content=BODY[0]), endpoints=(A,))


@given(answers)
def test_garbage_answers_are_errors_naming_the_endpoint_never_crashes(body: bytes) -> None:
    BODY[0] = body
    for call in (lambda: GARBAGE.range(b"k"), lambda: GARBAGE.txn([], []), lambda: GARBAGE.lease_grant(1),
                 lambda: GARBAGE.lease_keepalive(1), lambda: GARBAGE.members(), lambda: GARBAGE.put(b"k", b"v")):
        try:
            call()
        except EtcdError as e:
            assert "http://a:2379/v3/" in str(e)


def test_no_endpoints_is_an_error_saying_what_to_pass() -> None:
    with pytest.raises(EtcdError, match="http://HOST:PORT"):
        EtcdClient([])
