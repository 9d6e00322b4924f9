"""The gatekeepers' two requests answered before the framework (softudc/manager/fastpath.py):
answered only when the answer is known, with the route's bytes; everything else reaches the
application as it came."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from softudc.manager.api import MAX_BODY, PEER_KEY, Peer
from softudc.manager.fastpath import FastPath, _dumps, _poll_query
from tests.unit.manager.test_api import Api
from tests.unit.manager.test_auth_identity import REPORT, _join, manager  # noqa: F401 (a fixture)

PEER = Peer("h1", "f" * 64)
DESIRED = {"vms": [{"name": "web--a-0"}], "etag": "abc", "vnets": [], "note": "é"}


class FakeManager:
    def __init__(self, known: bool = True, beat: bool = True) -> None:
        self.known, self.beat = known, beat
        self.reports: list[Any] = []
        self.polls: list[tuple[str, float]] = []

    def host_known(self, name: str, cn: str | None, fingerprint: str | None) -> bool:
        return self.known and cn == name

    def report_heartbeat(self, name: str, cn: str | None, fp: str | None, body: Any, address: str | None) -> Any:
        self.reports.append(body)
        return {"host": name, "stored": True} if self.beat else None

    async def wait_desired(self, cn: str | None, name: str, since: str, wait: float) -> dict[str, Any]:
        self.polls.append((since, wait))
        return DESIRED


class Inner:
    """The application behind: records what it got, reads the whole body, answers 299."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


def _scope(method: str, path: str, query: bytes = b"", body: bytes = b"", peer: Peer | None = PEER,
           length: bytes | None = None) -> dict[str, Any]:
    headers = [(b"content-length", str(len(body)).encode() if length is None else length)] if method == "PUT" else []
    return {"type": "http", "method": method, "path": path, "query_string": query, "headers": headers,
            "client": ("10.0.0.1", 4000), "extensions": {"tls": {PEER_KEY: peer}} if peer else {}}


def _call(app: FastPath, scope: dict[str, Any], chunks: list[bytes] | None = None) -> tuple[int, bytes]:
    pieces = list(chunks or [b""])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pieces:
            chunk = pieces.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pieces)}
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_long_poll_of_a_known_host_is_answered_here_with_the_routes_bytes() -> None:
    from prometheus_client import CollectorRegistry, Counter

    from softudc.manager.metrics import request_latency

    registry = CollectorRegistry()
    counter = Counter("c", "requests", ["route", "status"], registry=registry)
    m, inner = FakeManager(), Inner()
    app = FastPath(inner, m, counter, request_latency(registry))  # type: ignore[arg-type]
    status, body = _call(app, _scope("GET", "/v1/hosts/h1/desired", b"since=x1&wait=2.5"))
    assert (status, body) == (200, _dumps(DESIRED)) and m.polls == [("x1", 2.5)] and inner.bodies == []
    assert registry.get_sample_value("c_total", {"route": "desired", "status": "200"}) == 1
    assert registry.get_sample_value("softudc_manager_request_duration_seconds_count", {"route": "desired"}) == 1
    assert json.loads(body) == DESIRED and "é".encode() in body  # as starlette's JSONResponse: UTF-8, compact


@pytest.mark.parametrize(("path", "query", "peer", "known"), [
    ("/v1/hosts/h1/desired", b"since=x&wait=2&other=1", PEER, True),  # a query it does not expect
    ("/v1/hosts/h1/desired", b"wait=inf", PEER, True),  # a value the route refuses
    ("/v1/hosts/h1/desired", b"since=" + b"a" * 65, PEER, True),
    ("/v1/hosts/h1/desired", b"since=a&since=b", PEER, True),
    ("/v1/hosts/h1/desired", b"", PEER, False),  # the cache does not know it: the route says why
    ("/v1/hosts/h1/desired", b"", None, True),  # no certificate
    ("/v1/hosts/h2/desired", b"", PEER, True),  # another host's certificate
    ("/v1/hosts/H_1/desired", b"", Peer("H_1", "f"), True),  # not a host name
    ("/v1/hosts/h1/desired/x", b"", PEER, True),
    ("/v1/farms", b"", PEER, True),
])
def test_anything_unusual_about_a_long_poll_goes_to_the_application(path: str, query: bytes, peer: Peer | None,
                                                                     known: bool) -> None:
    m, inner = FakeManager(known=known), Inner()
    assert _call(FastPath(inner, m, None), _scope("GET", path, query, peer=peer)) == (299, b"inner")  # type: ignore[arg-type]
    assert m.polls == []


def test_a_heartbeat_report_is_answered_here_and_news_reaches_the_application_whole() -> None:
    report = json.dumps(REPORT).encode()
    for beat, expect in ((True, (200, b'{"host":"h1","stored":true}')), (False, (299, b"inner"))):
        m, inner = FakeManager(beat=beat), Inner()
        app = FastPath(inner, m, None)  # type: ignore[arg-type]
        assert _call(app, _scope("PUT", "/v1/hosts/h1/status", body=report), [report[:10], report[10:]]) == expect
        assert m.reports == [REPORT]
        assert inner.bodies == ([] if beat else [report])


@pytest.mark.parametrize(("chunks", "length"), [
    ([b"{not json"], None),
    ([b"[" * 100_000], None),  # too deep for the parser: the application answers it
    ([b"x" * 100, b"y" * 100], b"1"),  # more than announced
    ([b"{}"], b"abc"),
    ([b"a" * (MAX_BODY + 10)], None),  # over the bound: the application refuses it
])
def test_a_report_body_it_cannot_take_reaches_the_application_unchanged(chunks: list[bytes],
                                                                        length: bytes | None) -> None:
    m, inner = FakeManager(), Inner()
    scope = _scope("PUT", "/v1/hosts/h1/status", body=b"".join(chunks), length=length)
    assert _call(FastPath(inner, m, None), scope, list(chunks)) == (299, b"inner")  # type: ignore[arg-type]
    assert inner.bodies == [b"".join(chunks)]


def test_a_client_gone_while_sending_its_report_reaches_the_application_as_gone() -> None:
    m, inner = FakeManager(), Inner()
    scope = _scope("PUT", "/v1/hosts/h1/status", length=b"100")
    assert _call(FastPath(inner, m, None), scope, [b"{", b"\"a"]) == (299, b"inner")  # type: ignore[arg-type]
    assert inner.bodies == [b'{"a'] and m.reports == []


def test_poll_query() -> None:
    assert _poll_query(b"") == ("", 0.0)
    assert _poll_query(b"since=ab&wait=3") == ("ab", 3.0)
    assert _poll_query(b"wait=nan") is None and _poll_query(b"\xff") is None and _poll_query(b"wait=x") is None


def test_over_https_both_paths_answer_alike_and_a_removed_host_is_refused_at_once(
        manager: tuple[Path, int, str], tmp_path: Path) -> None:  # noqa: F811
    state, port, admin = manager
    gk = _join(state, port, "h1", tmp_path, "a")
    first = gk.call("PUT", "/v1/hosts/h1/status", REPORT)  # news: stored through the route
    again = gk.call("PUT", "/v1/hosts/h1/status", REPORT)  # a heartbeat: answered from memory
    assert first == again == (200, {"host": "h1", "stored": True})
    fast = gk.call("GET", "/v1/hosts/h1/desired?since=&wait=0")
    routed = gk.call("GET", "/v1/hosts/h1/desired?since=&wait=0&x=1")  # not its shape: the route
    assert fast == routed and fast[0] == 200
    assert Api(state, port).call("DELETE", "/v1/hosts/h1", token=admin)[0] == 200
    assert gk.call("PUT", "/v1/hosts/h1/status", REPORT)[0] == 403
    assert gk.call("GET", "/v1/hosts/h1/desired")[0] == 403
