"""The gatekeeper's link to the manager: JSON both ways, one error type that says what to check,
bounded answers, the long poll's timeout above its wait, and several managers: it sticks to the
one that answers and moves on when it does not (never on a refusal)."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatekeeper import manager_link
from gatekeeper.manager_link import TIMEOUT_S, ManagerLink, ManagerLinkError
from softudc.pki import CertificateAuthority


def _link(handler: Any) -> ManagerLink:
    return ManagerLink(httpx.Client(base_url="https://manager.test:8443", transport=httpx.MockTransport(handler)))


def test_a_call_sends_json_and_returns_the_decoded_answer_with_the_wait_in_its_timeout() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"etag": "e1", "vms": []})

    link = _link(handler)
    assert link.call("PUT", "/v1/hosts/h1/status", {"state": "ready"}) == {"etag": "e1", "vms": []}
    assert link.call("GET", "/v1/hosts/h1/desired?since=e1&wait=30", wait=30) == {"etag": "e1", "vms": []}
    assert json.loads(seen[0].content) == {"state": "ready"} and seen[0].method == "PUT"
    assert seen[1].url.path == "/v1/hosts/h1/desired" and seen[1].url.params["wait"] == "30"
    assert seen[0].extensions["timeout"]["read"] == TIMEOUT_S
    assert seen[1].extensions["timeout"]["read"] == 30 + TIMEOUT_S  # longer than the manager may hold it


def test_a_refusal_is_a_link_error_with_the_managers_reason() -> None:
    link = _link(lambda r: httpx.Response(403, json={"error": "host h1 is not joined"}))
    with pytest.raises(ManagerLinkError, match=r"manager: PUT /v1/hosts/h1/status: 403 host h1 is not joined"):
        link.call("PUT", "/v1/hosts/h1/status", {})


def test_an_unreachable_manager_says_what_to_check() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ManagerLinkError, match=r"connection refused; check that the manager runs"):
        _link(handler).call("GET", "/v1/hosts/h1/desired")


@pytest.mark.adversarial
@pytest.mark.parametrize("body", [b"<html>proxy error</html>", b"\xff\xfe", b'{"etag": '])
def test_an_answer_that_is_not_json_is_a_link_error(body: bytes) -> None:
    with pytest.raises(ManagerLinkError, match="not JSON"):
        _link(lambda r: httpx.Response(200, content=body)).call("GET", "/v1/hosts/h1/desired")


@pytest.mark.adversarial
def test_an_endless_answer_is_cut_off_at_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_link, "MAX_ANSWER", 1 << 16)
    sent = [0]

    def endless() -> Any:
        while True:  # the link must stop reading, or this test never ends
            sent[0] += 4096
            yield b" " * 4096

    with pytest.raises(ManagerLinkError, match="exceeds"):
        _link(lambda r: httpx.Response(200, content=endless())).call("GET", "/v1/hosts/h1/desired")
    assert sent[0] <= (1 << 16) + 2 * 4096


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        peer = self.connection.getpeercert()
        server: Any = self.server
        server.calls += 1
        status = getattr(server, "status", 200)
        body = json.dumps({"client": dict(x[0] for x in peer["subject"])["commonName"],
                           "port": server.server_address[1], "error": f"status {status}"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Pki:
    def __init__(self, tmp_path: Path) -> None:
        self.ca = CertificateAuthority.create(tmp_path / "ca")
        self.files = {}
        for name, issued in (("server", self.ca.issue_server("localhost", ["127.0.0.1"])),
                             ("h1", self.ca.issue_client("h1"))):
            self.files[name] = (str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key"))
            Path(self.files[name][0]).write_bytes(issued.cert_pem)
            Path(self.files[name][1]).write_bytes(issued.key_pem)
        self.ca_file = str(tmp_path / "ca" / "ca.crt")

    def serve(self, port: int = 0) -> Any:
        """A manager on 127.0.0.1 (`port` 0: a free one) answering /v1/whoami; `.status` sets its answer."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca_file)
        ctx.load_cert_chain(*self.files["server"])
        ctx.verify_mode = ssl.CERT_REQUIRED
        server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Echo)
        server.daemon_threads = True
        server.calls = 0
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return server

    def link(self, *managers: Any) -> ManagerLink:
        """A link to these managers, in this order: servers, or ports (a manager that is down)."""
        ports = [m if isinstance(m, int) else m.server_address[1] for m in managers]
        return ManagerLink.mutual_tls(",".join(f"https://127.0.0.1:{p}" for p in ports), self.ca_file,
                                      *self.files["h1"])


def _stop(server: Any) -> None:
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    """A port nothing listens on (a manager that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mutual_tls_presents_the_hosts_certificate_and_checks_the_managers(tmp_path: Path) -> None:
    pki = _Pki(tmp_path)
    server = pki.serve()
    try:
        link = pki.link(server)
        assert link.call("GET", "/v1/whoami")["client"] == "h1"
        link.close()
        other = CertificateAuthority.create(tmp_path / "other")  # a manager this host does not trust
        stranger = ManagerLink.mutual_tls(f"https://127.0.0.1:{server.server_address[1]}",
                                          str(other.directory / "ca.crt"), *pki.files["h1"])
        with pytest.raises(ManagerLinkError, match="check that the manager runs"):
            stranger.call("GET", "/v1/whoami")
        stranger.close()
    finally:
        _stop(server)


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("", request=request)

    with pytest.raises(ManagerLinkError, match=r"GET /v1/hosts/h1/desired: ReadTimeout; check"):
        _link(handler).call("GET", "/v1/hosts/h1/desired")


def test_a_manager_that_is_down_is_passed_over_within_the_call_and_the_link_sticks_to_the_next(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = _Pki(tmp_path)
    second = pki.serve()
    down = _free_port()
    caplog.set_level(logging.WARNING, "gatekeeper.manager")
    link = pki.link(down, second)
    try:
        assert link.base == f"https://127.0.0.1:{down}"
        assert link.call("GET", "/v1/whoami")["port"] == second.server_address[1]
        assert link.base == f"https://127.0.0.1:{second.server_address[1]}"
        first = pki.serve(down)  # the first manager is back: the link stays where it is
        for _ in range(3):
            assert link.call("GET", "/v1/whoami")["port"] == second.server_address[1]
        assert first.calls == 0 and second.calls == 4
        switches = [r.getMessage() for r in caplog.records if "now talking to" in r.getMessage()]
        assert len(switches) == 1 and f"now talking to https://127.0.0.1:{second.server_address[1]}" in switches[0]
        _stop(second)  # and when the one it talks to stops, back to the first, in the same call
        assert link.call("GET", "/v1/whoami")["port"] == down
        assert len([r for r in caplog.records if "now talking to" in r.getMessage()]) == 2
        _stop(first)
    finally:
        link.close()


def test_when_no_manager_answers_the_error_names_every_one_tried(tmp_path: Path) -> None:
    pki = _Pki(tmp_path)
    a, b = _free_port(), _free_port()
    link = pki.link(a, b)
    with pytest.raises(ManagerLinkError) as e:
        link.call("GET", "/v1/whoami")
    msg = str(e.value)
    assert f"https://127.0.0.1:{a}" in msg and f"https://127.0.0.1:{b}" in msg
    assert "none answered" in msg and "check that one of them runs" in msg
    link.close()


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_manager_that_cannot_serve_now_is_passed_over(tmp_path: Path, status: int) -> None:
    pki = _Pki(tmp_path)
    busy, good = pki.serve(), pki.serve()
    busy.status = status
    link = pki.link(busy, good)
    try:
        assert link.call("GET", "/v1/whoami")["port"] == good.server_address[1]
        assert busy.calls == 1 and good.calls == 1
        good.status = status  # both: the error says what each answered
        with pytest.raises(ManagerLinkError, match=rf"{status} status {status}.*{status} status {status}"):
            link.call("GET", "/v1/whoami")
        assert busy.calls == 2 and good.calls == 2  # each manager at most once per call
    finally:
        link.close()
        _stop(busy)
        _stop(good)


@pytest.mark.parametrize("status", [400, 403, 404, 409])
def test_a_refusal_is_the_managers_word_and_is_never_asked_elsewhere(tmp_path: Path, status: int) -> None:
    pki = _Pki(tmp_path)
    refusing, other = pki.serve(), pki.serve()
    refusing.status = status
    link = pki.link(refusing, other)
    try:
        with pytest.raises(ManagerLinkError, match=rf"manager: GET /v1/whoami: {status} status {status}"):
            link.call("GET", "/v1/whoami")
        assert refusing.calls == 1 and other.calls == 0
    finally:
        link.close()
        _stop(refusing)
        _stop(other)


def test_a_long_poll_that_waits_its_time_out_on_a_healthy_manager_is_no_failure() -> None:
    """The manager holds a long poll for its wait and answers 200 with nothing new: the link stays."""
    seen: list[str] = []

    def waiting(request: httpx.Request) -> httpx.Response:
        seen.append("first")
        assert request.extensions["timeout"]["read"] == 30 + TIMEOUT_S
        return httpx.Response(200, json={"etag": "e1"})

    def other(request: httpx.Request) -> httpx.Response:
        seen.append("second")
        return httpx.Response(200, json={"etag": "e1"})

    link = ManagerLink([httpx.Client(base_url="https://m1.test:8443", transport=httpx.MockTransport(waiting)),
                        httpx.Client(base_url="https://m2.test:8443", transport=httpx.MockTransport(other))])
    for _ in range(3):
        assert link.call("GET", "/v1/hosts/h1/desired?since=e1&wait=30", wait=30) == {"etag": "e1"}
    assert seen == ["first"] * 3 and link.base == "https://m1.test:8443"


def test_a_manager_that_times_out_or_drops_the_connection_is_passed_over() -> None:
    def timing_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("", request=request)

    def dropping(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)

    good = httpx.Client(base_url="https://m3.test:8443", transport=httpx.MockTransport(
        lambda r: httpx.Response(200, json={"ok": True})))
    link = ManagerLink([httpx.Client(base_url="https://m1.test:8443", transport=httpx.MockTransport(timing_out)),
                        httpx.Client(base_url="https://m2.test:8443", transport=httpx.MockTransport(dropping)), good])
    assert link.call("PUT", "/v1/hosts/h1/status", {}) == {"ok": True}
    assert link.base == "https://m3.test:8443"
