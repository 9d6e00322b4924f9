"""The API server under slow and greedy clients (audit R16): a client that trickles its request
holds no thread and is cut off at the read deadline; connections and answering threads are
bounded; long polls are not cut by the read deadline and have their own bound."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from softudc.manager.api import serve
from softudc.manager.server import TlsServer, is_long_poll, request_size
from softudc.manager.service import Manager, init
from tests.unit.manager.test_api import Api
from tests.unit.manager.test_auth_identity import REPORT, _join


def _start(tmp: Path, **limits: float) -> tuple[Path, TlsServer, str]:
    admin = init(tmp, ["127.0.0.1"])
    server = serve(Manager(tmp), "127.0.0.1", 0, **limits)
    return tmp, server, admin


@pytest.fixture
def slow_deadline(tmp_path: Path) -> Iterator[tuple[Path, TlsServer, str]]:
    state, server, admin = _start(tmp_path / "m", read_deadline_s=3.0)
    yield state, server, admin
    server.shutdown()


def _tls_client(state: Path, port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        sock.settimeout(0.5)
        return sock.recv(1) == b""
    except (ssl.SSLError, ConnectionResetError):
        return True
    except TimeoutError:
        return False


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.adversarial
def test_r16_200_slow_clients_hold_no_threads_and_do_not_stop_a_normal_request(
        slow_deadline: tuple[Path, TlsServer, str]) -> None:
    state, server, admin = slow_deadline
    port = server.server_address[1]
    threads_before = threading.active_count()
    slow: list[socket.socket] = []
    try:
        for i in range(200):  # half after the TLS handshake, half not even that far
            if i % 2:
                s: socket.socket = _tls_client(state, port)
            else:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and no more
            if i % 2:
                s.sendall(b"GET /v1/farms HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # the headers never end
            slow.append(s)
        # Served at once, while every slow client is still connected.
        status, farms = Api(state, port).call("GET", "/v1/farms", token=admin)
        assert (status, farms) == (200, [])
        assert server.pending() >= 150  # the slow ones are being read ...
        assert threading.active_count() - threads_before < 10  # ... without a thread each (was 200)
        assert _wait(lambda: server.pending() == 0, 10.0), server.pending()  # cut off at the deadline
        assert server.counts["closed_read_deadline"] >= 190
        assert sum(_closed_by_server(s) for s in slow[:20]) == 20
    finally:
        for s in slow:
            s.close()
    assert _wait(lambda: threading.active_count() - threads_before < 5, 5.0)


@pytest.mark.adversarial
def test_r16_a_client_sending_a_byte_now_and_then_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    state, server, _ = _start(tmp_path / "m", read_deadline_s=1.5)
    try:
        client = _tls_client(state, server.server_address[1])
        started = time.monotonic()
        request = b"GET /v1/farms HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 50
        cut = False
        for b in request:  # every gap far shorter than any per-recv timeout
            try:
                client.sendall(bytes([b]))
            except (ssl.SSLError, OSError):
                cut = True
                break
            time.sleep(0.1)
            if time.monotonic() - started > 6:
                break
        cut = cut or _closed_by_server(client)
        assert cut and time.monotonic() - started < 6
        assert server.counts["closed_read_deadline"] == 1
    finally:
        server.shutdown()


@pytest.mark.adversarial
def test_r16_connections_beyond_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    state, server, admin = _start(tmp_path / "m", read_deadline_s=2.0, max_pending=10)
    port = server.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(10)]
    try:
        assert _wait(lambda: server.pending() == 10, 5.0)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert _closed_by_server(extra)
        assert server.counts["refused_too_many_pending"] >= 1
        assert _wait(lambda: server.pending() == 0, 5.0)  # the held ones reach their deadline
        assert Api(state, port).call("GET", "/v1/farms", token=admin)[0] == 200
    finally:
        for s in held:
            s.close()
        server.shutdown()


@pytest.mark.adversarial
def test_r16_long_polls_outlive_the_read_deadline_and_have_their_own_bound(tmp_path: Path) -> None:
    state, server, _ = _start(tmp_path / "m", read_deadline_s=1.0, max_long_polls=1)
    port = server.server_address[1]
    try:
        gk = _join(state, port, "h1", tmp_path, "a")
        assert gk.call("PUT", "/v1/hosts/h1/status", REPORT)[0] == 200
        etag = gk.call("GET", "/v1/hosts/h1/desired")[1]["etag"]
        results: list[tuple[int, float]] = []

        def long_poll() -> None:
            started = time.monotonic()
            status, _ = gk.call("GET", f"/v1/hosts/h1/desired?since={etag}&wait=2.5")
            results.append((status, time.monotonic() - started))

        first = threading.Thread(target=long_poll)
        first.start()
        time.sleep(0.5)
        status, body = gk.call("GET", f"/v1/hosts/h1/desired?since={etag}&wait=2")  # over the bound
        assert status == 503 and "busy" in body["error"]
        assert gk.call("GET", "/v1/hosts/h1/desired")[0] == 200  # a plain fetch is no long poll
        first.join(10)
        assert results and results[0][0] == 200 and results[0][1] >= 2.0  # held past the 1 s deadline
        assert server.counts["busy_long_polls"] == 1
    finally:
        server.shutdown()


def test_r16_every_answer_closes_its_connection_and_clients_reconnect(
        slow_deadline: tuple[Path, TlsServer, str]) -> None:
    state, server, admin = slow_deadline
    client = _tls_client(state, server.server_address[1])
    client.sendall(f"GET /v1/farms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n".encode())
    answer = b""
    while chunk := client.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head and json.loads(body) == []
    api = Api(state, server.server_address[1])
    assert [api.call("GET", "/v1/farms", token=admin)[0] for _ in range(3)] == [200, 200, 200]


def test_request_size_and_long_poll_detection() -> None:
    assert request_size(b"GET / HTTP/1.1\r\nHost: x\r\n", 100) is None
    assert request_size(b"GET / HTTP/1.1\r\n\r\n", 100) == 18
    assert request_size(b"PUT / HTTP/1.1\r\ncontent-LENGTH: 5\r\n\r\nab", 100) == 42
    assert request_size(b"PUT / HTTP/1.1\r\nContent-Length: 500\r\n\r\n", 100) == 39  # too big: 413 unread
    assert request_size(b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 100) == 38
    assert is_long_poll(b"GET /v1/hosts/h1/desired?since=ab&wait=30 HTTP/1.1")
    assert not is_long_poll(b"GET /v1/hosts/h1/desired?since=ab HTTP/1.1")
    assert not is_long_poll(b"GET /v1/hosts/h1/desired?wait=nan0 HTTP/1.1")
    assert not is_long_poll(b"PUT /v1/hosts/h1/desired?wait=3 HTTP/1.1")


@pytest.mark.adversarial
@given(st.binary(max_size=300))
def test_request_framing_never_raises_on_garbage(data: bytes) -> None:
    size = request_size(data, 1 << 20)
    assert size is None or size >= data.find(b"\r\n\r\n") + 4
    is_long_poll(data.split(b"\r\n", 1)[0])


def test_a_client_that_expects_100_continue_gets_it_before_sending_its_body(
        slow_deadline: tuple[Path, TlsServer, str]) -> None:
    state, server, _ = slow_deadline
    client = _tls_client(state, server.server_address[1])
    client.sendall(b"POST /v1/hosts/join HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert client.recv(100).startswith(b"HTTP/1.1 100 Continue")
    client.sendall(b"{}")
    answer = b""
    while chunk := client.recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"csr: not a PEM certificate request" in answer


def test_r16_what_the_server_refuses_is_in_the_metrics(tmp_path: Path) -> None:
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    server = serve(m, "127.0.0.1", 0, max_pending=1, read_deadline_s=5.0)
    held = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5)
    try:
        assert _wait(lambda: server.pending() == 1, 5.0)
        assert _closed_by_server(socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5))
        text = generate_latest(m.registry).decode()
        assert 'softudc_manager_api_dropped_total{reason="refused_too_many_pending"} 1.0' in text
        assert "softudc_manager_api_reading 1.0" in text
    finally:
        held.close()
        server.shutdown()


@pytest.mark.adversarial
def test_r16_garbage_and_broken_requests_never_stop_the_intake(tmp_path: Path) -> None:
    """Raw garbage, half handshakes and malformed requests over TLS, then a normal request."""
    state, server, admin = _start(tmp_path / "m", read_deadline_s=2.0)
    port = server.server_address[1]

    @settings(max_examples=40, deadline=None)
    @given(st.binary(max_size=2000), st.booleans())
    def one(data: bytes, over_tls: bool) -> None:
        try:
            s: socket.socket = _tls_client(state, port) if over_tls else socket.create_connection(
                ("127.0.0.1", port), timeout=5)
            s.sendall(data)
            s.close()
        except (ssl.SSLError, OSError):
            pass  # the server may close first: what matters is what happens next

    try:
        one()
        for request in (b"\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"PUT /v1/farms/x HTTP/1.1\r\n"
                        b"Content-Length: 99999999999\r\n\r\n", b"X" * 70000):
            s = _tls_client(state, port)
            with contextlib.suppress(ssl.SSLError, OSError):
                s.sendall(request)
                s.recv(100)
            s.close()
        assert Api(state, port).call("GET", "/v1/farms", token=admin)[0] == 200
        assert server._intake.is_alive()
        assert not [k for k in server.counts if k.startswith("error_")], server.counts
        assert _wait(lambda: server.pending() == 0, 5.0)
    finally:
        server.shutdown()
