"""The admin commands' connection: several managers of one group by URL (`--manager A,B` or
$SOFTUDC_MANAGER), tried in turn on connection errors and 5xx, never past a refusal (4xx)."""

from __future__ import annotations

import argparse
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from softudc.cli.connect import UrlApi, connect
from softudc.cli.errors import CliError
from softudc.pki import CertificateAuthority


class _Manager(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: Any = self.server
        server.calls += 1
        body = json.dumps({"port": server.server_address[1], "auth": self.headers["Authorization"]}).encode()
        self.send_response(server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Group:
    def __init__(self, tmp_path: Path) -> None:
        ca = CertificateAuthority.create(tmp_path / "ca")
        issued = ca.issue_server("localhost", ["127.0.0.1"])
        (tmp_path / "server.crt").write_bytes(issued.cert_pem)
        (tmp_path / "server.key").write_bytes(issued.key_pem)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
        self.ca = str(tmp_path / "ca" / "ca.crt")
        self.servers: list[Any] = []

    def serve(self, status: int = 200) -> Any:
        server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Manager)
        server.daemon_threads, server.calls, server.status = True, 0, status
        server.socket = self.ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def group(tmp_path: Path) -> Iterator[_Group]:
    g = _Group(tmp_path)
    yield g
    g.stop()


def _url(m: Any) -> str:
    return f"https://127.0.0.1:{m if isinstance(m, int) else m.server_address[1]}"


def _down() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_manager_that_is_down_is_passed_over_and_the_next_one_kept(group: _Group) -> None:
    down, up = _down(), group.serve()
    api = UrlApi(f"{_url(down)},{_url(up)}", group.ca, "t0k")
    assert api.hint == f"--manager {_url(down)},{_url(up)}"
    for _ in range(2):
        assert api.call("GET", "/v1/farms") == (200, {"port": up.server_address[1], "auth": "Bearer t0k"})
    assert up.calls == 2


def test_a_5xx_goes_on_to_the_next_and_a_4xx_does_not(group: _Group) -> None:
    failing, good = group.serve(503), group.serve()
    assert UrlApi(f"{_url(failing)},{_url(good)}", group.ca, "t")\
        .call("GET", "/v1/farms")[1]["port"] == good.server_address[1]
    refusing, other = group.serve(404), group.serve()
    status, _ = UrlApi(f"{_url(refusing)},{_url(other)}", group.ca, "t").call("GET", "/v1/farms/x")
    assert status == 404 and refusing.calls == 1 and other.calls == 0


def test_when_every_manager_fails_the_last_answer_or_every_url_is_said(group: _Group) -> None:
    failing = group.serve(500)
    assert UrlApi(f"{_url(_down())},{_url(failing)}", group.ca, "t").call("GET", "/v1/farms")[0] == 500
    a, b = _down(), _down()
    with pytest.raises(CliError) as e:
        UrlApi(f"{_url(a)},{_url(b)}", group.ca, "t").call("GET", "/v1/farms")
    assert str(e.value).startswith(f"managers {_url(a)}, {_url(b)}: GET /v1/farms: {_url(a)}: ")
    assert f"; {_url(b)}: " in str(e.value) and "is one running there" in str(e.value)


def _args(tmp_path: Path, manager: str | None) -> argparse.Namespace:
    return argparse.Namespace(lab=None, state_dir=str(tmp_path), manager=manager, ca=None, token_file=None)


def test_connect_takes_several_managers_from_the_option_or_the_environment(
        group: _Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTUDC_CA", group.ca)
    monkeypatch.setenv("SOFTUDC_TOKEN", "env-token")
    api = connect(_args(tmp_path, "https://10.0.0.1:8443,https://10.0.0.2"))
    assert isinstance(api, UrlApi) and api.urls == ["https://10.0.0.1:8443", "https://10.0.0.2"]
    monkeypatch.setenv("SOFTUDC_MANAGER", "https://m1:8443, https://m2:8443")
    api = connect(_args(tmp_path, None))
    assert isinstance(api, UrlApi) and api.hint == "--manager https://m1:8443,https://m2:8443"


@pytest.mark.parametrize(("manager", "said"), [
    ("https://m1,http://m2", "--manager: 'http://m2' is not a manager's URL"),
    ("https://m1:70000", "--manager: 'https://m1:70000': Port out of range"),
    ("https://m1,,https://m2", "--manager: '' is not a manager's URL"),
])
def test_a_wrong_manager_url_is_named(group: _Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      manager: str, said: str) -> None:
    monkeypatch.setenv("SOFTUDC_CA", group.ca)
    monkeypatch.setenv("SOFTUDC_TOKEN", "t")
    with pytest.raises(CliError, match="^" + said.replace("(", r"\(")):
        connect(_args(tmp_path, manager))
