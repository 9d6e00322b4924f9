"""Bad input to the API over HTTPS: reports, desired-state requests and farm requests with wrong
types, unknown fields, huge bodies and deep nesting get a clear 4xx naming what is wrong, in
bounded time and memory; nothing is stored and other requests go on being answered."""

from __future__ import annotations

import ssl
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from softudc.manager.api import MAX_BODY
from softudc.manager.daemon import ApiServer, serve
from softudc.manager.service import Manager, init
from tests.unit.manager.test_api import DEMO
from tests.unit.manager.test_daemon import _join_host

pytestmark = pytest.mark.adversarial

GOOD = {"vcpus": 8, "memory_mib": 8192, "running": []}
QUICK_S = 5.0  # generous: each of these is answered in milliseconds when the machine is idle


@dataclass
class Setup:
    server: ApiServer
    api: httpx.Client  # an admin
    gk: httpx.Client  # host h1, with its certificate


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    state = tmp_path / "manager"
    admin = init(state, ["127.0.0.1"])
    server = serve(Manager(state), "127.0.0.1", 0)
    base = f"https://127.0.0.1:{server.server_address[1]}"
    gk_tls = _join_host(state, server.server_address[1], "h1", tmp_path)
    with (httpx.Client(base_url=base, verify=ssl.create_default_context(cafile=str(state / "pki" / "ca.crt")),
                       timeout=30,
                       headers={"Authorization": f"Bearer {admin}"}) as api,
          httpx.Client(base_url=base, verify=gk_tls, timeout=30) as gk):
        assert gk.put("/v1/hosts/h1/status", json=GOOD).status_code == 200
        assert api.put("/v1/farms/demo", content=DEMO.replace("replicas: 3", "replicas: 1")).status_code == 200
        yield Setup(server, api, gk)
    server.shutdown()


def _refused(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body: dict[str, Any] = r.json()
    assert all(w in body["error"] for w in words), body["error"]
    return body


def _unaffected(s: Setup, revision: int) -> None:
    """Nothing stored, and everyone else still served: the farm, the host's report, a new report."""
    farm = s.api.get("/v1/farms/demo").json()
    assert farm["revision"] >= revision and farm["spec"]["vms"][0]["replicas"] == 1
    assert s.api.get("/v1/hosts").json()[0]["vcpus"] == GOOD["vcpus"]
    assert s.gk.put("/v1/hosts/h1/status", json=GOOD).status_code == 200
    assert s.gk.get("/v1/hosts/h1/desired").status_code == 200


def _timed(call: Any) -> httpx.Response:
    started = time.monotonic()
    r: httpx.Response = call()
    assert time.monotonic() - started < QUICK_S
    return r


@pytest.mark.parametrize(("report", "field"), [
    ({"vcpus": "8"}, "vcpus"), ({"vcpus": True}, "vcpus"), ({"memory_mib": 1.5}, "memory_mib"),
    ({"running": "demo--web-0"}, "running"), ({"running": [1, 2]}, "running"),
    ({"sizes": {"demo--db-0": "big"}}, "sizes"), ({"migrations": []}, "migrations"),
    ({"bogus": 1}, "bogus"), ({"running": [], "x": [[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]}, "x"),
    ({"contract": 99}, "contract"),
])
def test_a_report_of_the_wrong_type_is_a_400_naming_the_field_and_nothing_is_stored(
        setup: Setup, report: dict[str, Any], field: str) -> None:
    revision = setup.api.get("/v1/farms/demo").json()["revision"]
    sent = {**GOOD, "vcpus": 4, **report}  # stored, vcpus would no longer be GOOD's
    _refused(_timed(lambda: setup.gk.put("/v1/hosts/h1/status", json=sent)), 400, field, "nothing stored")
    _unaffected(setup, revision)


@pytest.mark.parametrize("body", [
    b"[]", b"3", b'"x"', b"null", b"{", b"\xff\xfe", b"[" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'{"vcpus": 8, "running": ' + b"[" * 900 + b"]" * 900 + b"}",
    b'{"vcpus": 8, "x": ' + b"[" * 900 + b"]" * 900 + b"}"])
def test_a_report_that_is_not_a_json_object_or_nested_deep_is_a_400(setup: Setup, body: bytes) -> None:
    revision = setup.api.get("/v1/farms/demo").json()["revision"]
    r = _timed(lambda: setup.gk.put("/v1/hosts/h1/status", content=body, headers={"Content-Type": "application/json"}))
    assert r.status_code == 400 and r.json()["error"], r.text[:300]
    _unaffected(setup, revision)


@pytest.mark.parametrize(("query", "field"), [
    ("wait=soon", "wait"), ("wait=nan", "wait"), ("wait=inf", "wait"), ("since=" + "e" * 65, "since"),
    ("wait=1e999", "wait"),
])
def test_a_desired_state_request_with_a_bad_query_is_a_400_naming_it(setup: Setup, query: str, field: str) -> None:
    _refused(_timed(lambda: setup.gk.get(f"/v1/hosts/h1/desired?{query}")), 400, field)
    _unaffected(setup, 1)


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "/v1/farms/demo/instances/db-0/migrate", {"to": 7}, "to"),
    ("POST", "/v1/farms/demo/instances/db-0/migrate", {"to": "h2", "urgent": True}, "urgent"),
    ("POST", "/v1/farms/demo/instances/db-0/migrate", {"cancel": "yes"}, "cancel"),
    ("POST", "/v1/farms/demo/instances/db-0/migrate", {"to": "H2; rm -rf /"}, "to"),
    ("POST", "/v1/farms/demo/keys/rotate", {"vnet": ["front"]}, "vnet"),
    ("POST", "/v1/farms/demo/keys/rotate", {"vnets": "front"}, "vnets"),
    ("PUT", "/v1/hosts/h1/state", {"state": 3}, "state"),
    ("PUT", "/v1/hosts/h1/state", {"state": "ready", "why": "x"}, "why"),
    ("POST", "/v1/hosts/join", {"token": "t", "csr": "c", "host": "h9"}, "host"),
    ("POST", "/v1/hosts/join", {"token": 1, "csr": "c"}, "token"),
])
def test_a_farm_or_host_request_with_a_wrong_type_or_an_unknown_field_is_a_400_naming_it(
        setup: Setup, method: str, path: str, body: dict[str, Any], field: str) -> None:
    before = setup.api.get("/v1/events").json()
    body_ = _refused(_timed(lambda: setup.api.request(method, path, json=body)), 400, field, "nothing was changed")
    assert body_["problems"] and all(p.startswith("body") for p in body_["problems"])
    assert setup.api.get("/v1/events").json() == before  # no migration, rotation or state change began
    _unaffected(setup, 1)


@pytest.mark.parametrize(("path", "field"), [
    ("/v1/farms/Demo", "name"), ("/v1/farms/" + "a" * 41, "name"), ("/v1/events?limit=0", "limit"),
    ("/v1/events?kind=vm", "kind"), ("/v1/hosts/h1?force=maybe", "force"),
])
def test_a_bad_path_or_query_is_a_400_naming_it(setup: Setup, path: str, field: str) -> None:
    method = "DELETE" if "force" in path else "GET"
    _refused(_timed(lambda: setup.api.request(method, path)), 400, field)
    _unaffected(setup, 1)


def _chunks(total: int, size: int = 64 << 10) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size


@pytest.mark.parametrize("path", ["/v1/farms/demo", "/v1/hosts/h1/status"])
def test_a_huge_body_is_a_413_read_no_further_than_the_limit(setup: Setup, path: str) -> None:
    client = setup.gk if "hosts" in path else setup.api
    revision = setup.api.get("/v1/farms/demo").json()["revision"]
    # Announced: refused before the body is read.
    _refused(_timed(lambda: client.put(path, content=b"x" * (MAX_BODY + 1))), 413, "body over")
    # Streamed without a length (chunked): refused once the limit is passed, in bounded memory.
    tracemalloc.start()
    try:
        r = _timed(lambda: client.put(path, content=_chunks(16 * MAX_BODY)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _refused(r, 413, "body over")
    assert peak < 4 * MAX_BODY, f"{peak} bytes at the peak while 16 MiB were sent"
    assert setup.server.stats.dropped["body_too_large"] == 2
    _unaffected(setup, revision)


@pytest.mark.parametrize(("text", "why"), [
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
    ("x:\n" + "".join("  " * i + "- \n" for i in range(1, 400)), ""),
    ("a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "anchors and aliases"),
    ("\t\x00: {{{", ""),
    ("- just\n- a list\n", ""),
])
def test_a_bad_or_deeply_nested_yaml_farm_is_a_400_and_nothing_is_stored(setup: Setup, text: str, why: str) -> None:
    revision = setup.api.get("/v1/farms/demo").json()["revision"]
    for method, path in (("PUT", "/v1/farms/demo"), ("POST", "/v1/farms/demo/plan")):
        body = _refused(_timed(lambda: setup.api.request(method, path, content=text)), 400)  # noqa: B023
        assert body["problems"] and any(why in p for p in body["problems"]), body
    assert setup.api.get("/v1/farms/demo").json()["revision"] == revision
    _unaffected(setup, revision)


def test_unknown_routes_and_methods_say_so(setup: Setup) -> None:
    _refused(setup.api.get("/v1/nothing"), 404, "no such route")
    _refused(setup.api.request("PATCH", "/v1/farms/demo"), 405, "method not allowed")
    _refused(setup.api.get("/v1/farms/"), 404, "no such route")
    _refused(setup.api.get("/v1/farms", headers={"Authorization": "Bearer sudc_forged"}), 401, "unknown token")
    _refused(setup.api.get("/v1/farms", headers={"Authorization": "Basic eDp5"}), 401, "Authorization: Bearer")
