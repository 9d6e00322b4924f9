"""The API server under slow and greedy clients (audit R16): a client that trickles its request
holds no thread and is cut off at the read deadline; connections are bounded; long polls are not
cut by the read deadline; kept-alive connections serve several requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from softudc.etcd.cluster import free_port
from softudc.manager.daemon import ApiServer, serve
from softudc.manager.service import Manager, init
from softudc.pki import CertificateAuthority
from tests.unit.manager.test_api import DEMO, Api, _csr
from tests.unit.manager.test_auth_identity import REPORT, _join

ROOT = Path(__file__).parents[3]


def _start(tmp: Path, **limits: Any) -> tuple[Path, ApiServer, str]:
    admin = init(tmp, ["127.0.0.1"])
    server = serve(Manager(tmp), "127.0.0.1", 0, **limits)
    return tmp, server, admin


@pytest.fixture
def slow_deadline(tmp_path: Path) -> Iterator[tuple[Path, ApiServer, str]]:
    state, server, admin = _start(tmp_path / "m", read_deadline_s=3.0)
    yield state, server, admin
    server.shutdown()


def _tls_client(state: Path, port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_by_server(sock: socket.socket, within: float = 0.5) -> bool:
    try:
        sock.settimeout(within)
        return sock.recv(1) == b""
    except (ssl.SSLError, ConnectionResetError):
        return True
    except TimeoutError:
        return False


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _answer(sock: ssl.SSLSocket) -> bytes:
    """One whole answer (headers and a Content-Length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.adversarial
def test_r16_200_slow_clients_hold_no_threads_and_do_not_stop_a_normal_request(
        slow_deadline: tuple[Path, ApiServer, str]) -> None:
    state, server, admin = slow_deadline
    port = server.server_address[1]
    threads_before = threading.active_count()
    slow: list[socket.socket] = []
    try:
        for i in range(200):  # half after the TLS handshake, half not even that far
            if i % 2:
                s: socket.socket = _tls_client(state, port)
                s.sendall(b"GET /v1/farms HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # the headers never end
            else:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and no more
            slow.append(s)
        started = time.monotonic()
        status, farms = Api(state, port).call("GET", "/v1/farms", token=admin)  # while all are connected
        assert (status, farms) == (200, []) and time.monotonic() - started < 5.0
        assert server.connections() >= 100  # the slow ones are open (after their handshake) ...
        assert threading.active_count() - threads_before < 10  # ... without a thread each
        assert _wait(lambda: server.stats.dropped.get("closed_read_deadline", 0) >= 100, 10.0), server.stats
        assert sum(_closed_by_server(s) for s in slow[1:40:2]) == 20  # cut off at the deadline
        assert server.connections() == 0
    finally:
        for s in slow:
            s.close()


@pytest.mark.adversarial
def test_r16_a_client_sending_a_byte_now_and_then_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    state, server, _ = _start(tmp_path / "m", read_deadline_s=1.5)
    try:
        client = _tls_client(state, server.server_address[1])
        started = time.monotonic()
        request = b"GET /v1/farms HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 50
        cut = False
        for b in request:  # every gap far shorter than the deadline
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
        assert server.stats.dropped["closed_read_deadline"] == 1
    finally:
        server.shutdown()


@pytest.mark.adversarial
def test_r16_a_body_trickled_forever_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    state, server, admin = _start(tmp_path / "m", read_deadline_s=1.5)
    try:
        client = _tls_client(state, server.server_address[1])
        client.sendall(f"PUT /v1/farms/f HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n"
                       "Content-Length: 100000\r\n\r\n".encode())
        started = time.monotonic()
        with contextlib.suppress(ssl.SSLError, OSError):
            while time.monotonic() - started < 6:
                client.sendall(b"x")
                time.sleep(0.2)
        assert time.monotonic() - started < 6 or _closed_by_server(client)
        assert server.stats.dropped["closed_read_deadline"] == 1
        assert Api(state, server.server_address[1]).call("GET", "/v1/farms", token=admin)[1] == []  # nothing stored
    finally:
        server.shutdown()


@pytest.mark.adversarial
def test_r16_connections_beyond_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    state, server, admin = _start(tmp_path / "m", read_deadline_s=2.0, limit_concurrency=10)
    port = server.server_address[1]
    held = [_tls_client(state, port) for _ in range(10)]
    try:
        assert _wait(lambda: server.connections() == 10, 5.0)
        extra = _tls_client(state, port)
        assert _closed_by_server(extra, 2.0)
        assert server.stats.dropped["refused_too_many_connections"] >= 1
        assert _wait(lambda: server.connections() == 0, 5.0)  # the held ones reach their deadline
        assert Api(state, port).call("GET", "/v1/farms", token=admin)[0] == 200
    finally:
        for s in held:
            s.close()
        server.shutdown()


def test_r16_long_polls_outlive_the_read_deadline(tmp_path: Path) -> None:
    state, server, _ = _start(tmp_path / "m", read_deadline_s=1.0)
    port = server.server_address[1]
    try:
        gk = _join(state, port, "h1", tmp_path, "a")
        assert gk.call("PUT", "/v1/hosts/h1/status", REPORT)[0] == 200
        etag = gk.call("GET", "/v1/hosts/h1/desired")[1]["etag"]
        started = time.monotonic()
        status, body = gk.call("GET", f"/v1/hosts/h1/desired?since={etag}&wait=2.5")
        assert status == 200 and body["etag"] == etag and time.monotonic() - started >= 2.0
        assert "closed_read_deadline" not in server.stats.dropped
    finally:
        server.shutdown()


def test_r16_a_kept_alive_connection_serves_several_requests_and_an_idle_one_is_closed(tmp_path: Path) -> None:
    state, server, admin = _start(tmp_path / "m", read_deadline_s=3.0, keep_alive_s=1)
    try:
        client = _tls_client(state, server.server_address[1])
        for _ in range(3):
            client.sendall(f"GET /v1/farms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n".encode())
            answer = _answer(client)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"[]")
        assert _closed_by_server(client, 3.0)  # idle past keep_alive_s
    finally:
        server.shutdown()


def test_a_client_that_expects_100_continue_gets_it_before_sending_its_body(
        slow_deadline: tuple[Path, ApiServer, str]) -> None:
    state, server, _ = slow_deadline
    client = _tls_client(state, server.server_address[1])
    client.sendall(b"POST /v1/hosts/join HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                   b"Content-Type: application/json\r\nContent-Length: 28\r\n\r\n")
    assert client.recv(100).startswith(b"HTTP/1.1 100 Continue")
    client.sendall(b'{"token": "t", "csr": "nope"}'[:28])
    answer = _answer(client)
    assert answer.startswith(b"HTTP/1.1 400"), answer


def test_r16_what_the_server_refuses_is_in_the_metrics(tmp_path: Path) -> None:
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    server = serve(m, "127.0.0.1", 0, limit_concurrency=1, read_deadline_s=5.0)
    held = _tls_client(tmp_path, server.server_address[1])
    try:
        assert _wait(lambda: server.connections() == 1, 5.0)
        assert _closed_by_server(_tls_client(tmp_path, server.server_address[1]), 2.0)
        assert _wait(lambda: server.connections() == 1, 5.0)  # the refused one is gone (its loss is async)
        text = generate_latest(m.registry).decode()
        assert 'softudc_manager_api_dropped_total{reason="refused_too_many_connections"} 1.0' in text
        assert "softudc_manager_api_connections 1.0" in text
    finally:
        held.close()
        server.shutdown()


def test_r16_headers_over_the_bound_are_refused_and_a_big_body_is_not_a_header(tmp_path: Path) -> None:
    """Request line and headers are bounded however they arrive (at once, or a header trickled in
    pieces that never ends); a body far over that bound, sent at once after its headers, is not
    mistaken for them."""
    state, server, admin = _start(tmp_path / "m", max_header_bytes=4096)
    port = server.server_address[1]
    try:
        for pieces in ([b"GET /v1/farms HTTP/1.1\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"],
                       [b"GET /v1/farms HTTP/1.1\r\nX-Big: "] + [b"a" * 1000] * 6):
            s = _tls_client(state, port)
            with contextlib.suppress(ssl.SSLError, OSError):
                for piece in pieces:
                    s.sendall(piece)
                    time.sleep(0.05)
            assert b" 400 " in s.recv(200)
            s.close()
        body = json.dumps({"padding": "x" * 50_000}).encode()
        s = _tls_client(state, port)
        s.sendall(b"PUT /v1/farms/f HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer " + admin.encode() +
                  b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert b"application/json" in s.recv(300)  # the service's answer, not the server's refusal of a head
        s.close()
        assert server.stats.dropped["header_too_large"] == 2
        assert Api(state, port).call("GET", "/v1/farms", token=admin)[0] == 200
    finally:
        server.shutdown()


@pytest.mark.adversarial
def test_r16_garbage_and_broken_requests_never_stop_the_server(tmp_path: Path) -> None:
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
        assert _wait(lambda: server.connections() == 0, 5.0)
    finally:
        server.shutdown()



def _start_daemon(state_dir: Path, metrics_port: int) -> tuple[subprocess.Popen[str], int]:
    """`softudc manager` as its own process (threads counted from /proc); returns it and its port."""
    proc = subprocess.Popen([sys.executable, "-m", "softudc.cli", "--state-dir", str(state_dir), "manager",
                             "--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{metrics_port}"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert proc.stderr is not None
    for _ in range(50):
        line = proc.stderr.readline()
        if found := re.search(r"https://127\.0\.0\.1:(\d+)/v1", line):
            return proc, int(found.group(1))
        if not line:
            break
    proc.kill()
    raise AssertionError(f"the manager did not start: {proc.stderr.read()}")


def _join_host(state: Path, port: int, host: str, tmp: Path) -> ssl.SSLContext:
    """Join `host` with a one-time token; returns a TLS context with its new certificate."""
    csr, key = _csr(host)
    token = CertificateAuthority.load(state / "pki").create_join_token(host)
    status, joined = Api(state, port).call("POST", "/v1/hosts/join", {"token": token, "csr": csr})
    assert status == 200, joined
    cert, pem = tmp / f"{host}.crt", tmp / f"{host}.key"
    cert.write_text(joined["certificate"])
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(cert), str(pem))
    return ctx


async def _metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


async def _long_polls_and_admins(port: int, metrics_port: int, gk_tls: ssl.SSLContext, admin_tls: ssl.SSLContext,
                                 admin: str, pid: int, polls: int) -> dict[str, Any]:
    base = f"https://127.0.0.1:{port}"
    seen: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=polls + 10, max_keepalive_connections=polls + 10)
    async with (httpx.AsyncClient(base_url=base, verify=gk_tls, limits=limits, timeout=90) as gk,
                httpx.AsyncClient(base_url=base, verify=admin_tls, timeout=30,
                                  headers={"Authorization": f"Bearer {admin}"}) as api,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", timeout=10) as metrics):
        assert (await gk.put("/v1/hosts/h1/status", json=REPORT)).status_code == 200
        etag = (await gk.get("/v1/hosts/h1/desired")).json()["etag"]
        waiting = [asyncio.create_task(gk.get(f"/v1/hosts/h1/desired?since={etag}&wait=50")) for _ in range(polls)]
        deadline = time.monotonic() + 60
        while await _metric(metrics, "softudc_manager_long_polls_waiting") < polls:
            assert time.monotonic() < deadline and not any(t.done() for t in waiting), "the long polls did not all wait"
            await asyncio.sleep(0.2)
        seen["threads"] = len(os.listdir(f"/proc/{pid}/task"))
        seen["admin_s"] = []
        for _ in range(10):  # while every long poll waits
            started = time.monotonic()
            assert (await api.get("/v1/farms")).status_code == 200
            seen["admin_s"].append(time.monotonic() - started)
        applied = await api.put("/v1/farms/demo", content=DEMO.replace("replicas: 3", "replicas: 1"))
        assert applied.status_code == 200, applied.text
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 60)  # the change wakes them all
        seen["statuses"] = {r.status_code for r in answers}
        seen["etags"] = {r.json()["etag"] for r in answers} - {etag}
        seen["left"] = await _metric(metrics, "softudc_manager_long_polls_waiting")
    return seen


def test_500_long_polls_wait_on_a_handful_of_threads_and_admins_are_answered_meanwhile(tmp_path: Path) -> None:
    state = tmp_path / "manager"
    admin = init(state, ["127.0.0.1"])
    metrics_port = free_port()  # below the ephemeral range: no other worker's connection takes it meanwhile
    proc, port = _start_daemon(tmp_path, metrics_port)
    try:
        gk_tls = _join_host(state, port, "h1", tmp_path)
        admin_tls = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
        seen = asyncio.run(_long_polls_and_admins(port, metrics_port, gk_tls, admin_tls, admin, proc.pid, 500))
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"500 long polls waiting: {seen['threads']} threads in the manager; admin GET /v1/farms meanwhile "
          f"max {max(seen['admin_s']) * 1000:.1f} ms")  # figures for the notes (pytest -s)
    assert seen["threads"] <= 24, seen["threads"]  # a fixed handful (pools, the loop): was one per long poll, 500
    assert max(seen["admin_s"]) < 2.0, seen["admin_s"]  # generous: a few ms when idle
    assert seen["statuses"] == {200} and len(seen["etags"]) == 1 and seen["left"] == 0


def _no_answer(ctx: ssl.SSLContext, port: int) -> bool:
    """Whether a gatekeeper request over `ctx` is refused before any answer: at the handshake, or
    (TLS 1.3, where the server checks the client's certificate after it) at the first read."""
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="127.0.0.1")
        s.sendall(b"GET /v1/hosts/h1/desired HTTP/1.1\r\nHost: x\r\n\r\n")
        return s.recv(100) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


@pytest.mark.adversarial
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")  # on purpose
def test_a_client_certificate_from_another_ca_or_an_old_tls_version_is_refused_at_the_handshake(
        tmp_path: Path) -> None:
    state, server, admin = _start(tmp_path / "m")
    port = server.server_address[1]
    try:
        other = CertificateAuthority.create(tmp_path / "other").issue_client("h1")  # names h1, wrong CA
        cert, key = tmp_path / "other.crt", tmp_path / "other.key"
        cert.write_bytes(other.cert_pem)
        key.write_bytes(other.key_pem)
        forged = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
        forged.load_cert_chain(str(cert), str(key))
        old = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # this client would speak TLS 1.1: the server must refuse it
        assert _no_answer(forged, port) and _no_answer(old, port)
        assert Api(state, port).call("GET", "/v1/farms", token=admin)[0] == 200  # no certificate: fine for admins
    finally:
        server.shutdown()


def test_the_peer_certificate_is_parsed_once_per_connection_and_forwarded_for_is_ignored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gatekeeper's kept-alive connection: its certificate is parsed at the handshake, not per
    request; an X-Forwarded-For from it does not move the address its migrations go to (R20)."""
    import softudc.manager.daemon as daemon
    from softudc.manager.api import peer_of as real  # the daemon's own name for it is patched below

    parsed: list[int] = []

    def counted(chain: list[str]) -> Any:
        parsed.append(len(chain))
        return real(chain)

    monkeypatch.setattr(daemon, "peer_of", counted)
    init(tmp_path / "m", ["127.0.0.1"])
    m = Manager(tmp_path / "m")
    server = serve(m, "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        gk_tls = _join_host(tmp_path / "m", port, "h1", tmp_path)
        parsed.clear()  # the join's connection had no certificate
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=gk_tls, timeout=30,
                          headers={"X-Forwarded-For": "10.9.9.9"}) as gk:
            for _ in range(3):
                assert gk.put("/v1/hosts/h1/status", json=REPORT).status_code == 200
                assert gk.get("/v1/hosts/h1/desired").status_code == 200
        assert parsed == [1]
        assert m.store.get("host", "h1").spec["address"] == "127.0.0.1"  # type: ignore[union-attr]
    finally:
        server.shutdown()
        m.close()
