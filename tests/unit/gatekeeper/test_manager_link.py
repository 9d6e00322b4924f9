"""The gatekeeper's link to the manager: JSON both ways, one error type that says what to check,
bounded answers, and the long poll's timeout above its wait."""

from __future__ import annotations

import http.server
import json
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
        body = json.dumps({"client": dict(x[0] for x in peer["subject"])["commonName"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_mutual_tls_presents_the_hosts_certificate_and_checks_the_managers(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    files = {}
    for name, issued in (("server", ca.issue_server("localhost", ["127.0.0.1"])), ("h1", ca.issue_client("h1"))):
        files[name] = (tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
        files[name][0].write_bytes(issued.cert_pem)
        files[name][1].write_bytes(issued.key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca" / "ca.crt"))
    ctx.load_cert_chain(*files["server"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = http.server.HTTPServer(("127.0.0.1", 0), _Echo)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        link = ManagerLink.mutual_tls(url, str(tmp_path / "ca" / "ca.crt"), *map(str, files["h1"]))
        assert link.call("GET", "/v1/whoami") == {"client": "h1"}
        link.close()
        other = CertificateAuthority.create(tmp_path / "other")  # a manager this host does not trust
        stranger = ManagerLink.mutual_tls(url, str(other.directory / "ca.crt"), *map(str, files["h1"]))
        with pytest.raises(ManagerLinkError, match="check that the manager runs"):
            stranger.call("GET", "/v1/whoami")
        stranger.close()
    finally:
        server.shutdown()
        server.server_close()


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("", request=request)

    with pytest.raises(ManagerLinkError, match=r"GET /v1/hosts/h1/desired: ReadTimeout; check"):
        _link(handler).call("GET", "/v1/hosts/h1/desired")
