"""The manager API over real HTTPS on loopback: tokens and roles, farm validation, gatekeeper
join and mutual TLS, persistence across a restart."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from softudc.etcd.cluster import free_port
from softudc.manager.api import openapi_document
from softudc.manager.auth import TokenStore
from softudc.manager.daemon import serve
from softudc.manager.service import Manager, init

ROOT = Path(__file__).parents[3]
DEMO = (ROOT / "configs" / "farms" / "demo.yaml").read_text()


class Api:
    def __init__(self, state: Path, port: int, cert: tuple[str, str] | None = None) -> None:
        self.ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
        if cert:
            self.ctx.load_cert_chain(*cert)
        self.port = port

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        payload = json.loads(r.read() or b"null")
        conn.close()
        return r.status, payload


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[Path, int, str]]:
    admin = init(tmp_path, ["127.0.0.1"])
    server = serve(Manager(tmp_path), "127.0.0.1", 0)
    yield tmp_path, server.server_address[1], admin
    server.shutdown()


def test_apply_get_and_delete_with_an_admin_token(manager: tuple[Path, int, str]) -> None:
    state, port, admin = manager
    api = Api(state, port)
    assert api.call("GET", "/v1/farms")[0] == 401
    status, body = api.call("PUT", "/v1/farms/demo", DEMO, admin, {"Content-Type": "application/yaml"})
    assert status == 200 and body["revision"] >= 1
    status, farm = api.call("GET", "/v1/farms/demo", token=admin)
    assert status == 200 and farm["spec"]["vnets"] == ["front", "back"]
    assert farm["events"][0]["type"] == "Applied"
    assert api.call("PUT", "/v1/farms/demo", DEMO, admin, {"If-Match": "0"})[0] == 409  # stale
    assert api.call("DELETE", "/v1/farms/demo", token=admin)[0] == 200
    assert api.call("GET", "/v1/farms/demo", token=admin)[0] == 404


def test_a_broken_descriptor_is_refused_whole_and_stores_nothing(manager: tuple[Path, int, str]) -> None:
    state, port, admin = manager
    api = Api(state, port)
    bad = DEMO.replace("memory: 128Mi", "memory: lots", 1).replace("vnet: front", "vnet: nowhere")
    status, body = api.call("PUT", "/v1/farms/demo", bad, admin)
    assert status == 400 and len(body["problems"]) == 2
    assert any("spec.vms[0].memory" in p for p in body["problems"])
    assert api.call("GET", "/v1/farms", token=admin)[1] == []


def test_roles_viewer_cannot_apply_and_scoped_tokens_cannot_see_other_farms(manager: tuple[Path, int, str]) -> None:
    state, port, admin = manager
    api = Api(state, port)
    api.call("PUT", "/v1/farms/demo", DEMO, admin)
    api.call("PUT", "/v1/farms/shop", DEMO.replace("name: demo", "name: shop"), admin)
    tokens = TokenStore(state / "tokens.json")
    viewer = tokens.create("v", "viewer", ["demo"])
    operator = tokens.create("o", "operator", ["shop"])
    assert api.call("GET", "/v1/farms/demo", token=viewer)[0] == 200
    assert api.call("PUT", "/v1/farms/demo", DEMO, viewer)[0] == 403
    assert [f["name"] for f in api.call("GET", "/v1/farms", token=viewer)[1]] == ["demo"]
    assert api.call("GET", "/v1/farms/shop", token=viewer)[0] == 404  # not even its existence
    assert api.call("PUT", "/v1/farms/shop", DEMO.replace("name: demo", "name: shop"), operator)[0] == 200
    assert api.call("DELETE", "/v1/farms/demo", token=operator)[0] == 403


def _csr(name: str) -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(
        NameOID.COMMON_NAME, name)])).sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def test_gatekeepers_join_once_and_report_only_with_their_certificate(
        manager: tuple[Path, int, str], tmp_path: Path) -> None:
    state, port, admin = manager
    api = Api(state, port)
    m = Manager(state)
    token = m.ca.create_join_token("h1")
    csr, key = _csr("whatever")
    status, joined = api.call("POST", "/v1/hosts/join", {"token": token, "csr": csr})
    assert status == 200 and joined["host"] == "h1"
    assert api.call("POST", "/v1/hosts/join", {"token": token, "csr": csr})[0] == 403  # one time only
    cert, pem = tmp_path / "h1.crt", tmp_path / "h1.key"
    cert.write_text(joined["certificate"])
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    gk = Api(state, port, (str(cert), str(pem)))
    assert gk.call("PUT", "/v1/hosts/h1/status", {"vcpus": 8, "memory_mib": 8192})[0] == 200
    assert gk.call("PUT", "/v1/hosts/h2/status", {"vcpus": 8})[0] == 403  # another host's route
    assert api.call("PUT", "/v1/hosts/h1/status", {"vcpus": 1})[0] == 403  # no certificate at all
    hosts = api.call("GET", "/v1/hosts", token=admin)[1]
    assert hosts[0]["name"] == "h1" and hosts[0]["vcpus"] == 8


def test_restarting_the_manager_loses_nothing(tmp_path: Path) -> None:
    admin = init(tmp_path, ["127.0.0.1"])
    first = serve(Manager(tmp_path), "127.0.0.1", 0)
    Api(tmp_path, first.server_address[1]).call("PUT", "/v1/farms/demo", DEMO, admin)
    first.shutdown()
    second = serve(Manager(tmp_path), "127.0.0.1", 0)
    try:
        status, farm = Api(tmp_path, second.server_address[1]).call("GET", "/v1/farms/demo", token=admin)
        assert status == 200 and farm["spec"]["descriptor"] == DEMO
    finally:
        second.shutdown()


def test_the_openapi_document_lists_every_route(manager: tuple[Path, int, str]) -> None:
    state, port, _ = manager
    status, doc = Api(state, port).call("GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    routes = {"/v1/farms", "/v1/farms/{name}", "/v1/hosts", "/v1/hosts/join", "/v1/hosts/{name}/status",
              "/v1/manager/status"}
    assert routes <= set(doc["paths"])


def _join(state: Path, port: int, m: Manager, host: str, tmp: Path) -> Api:
    csr, key = _csr(host)
    status, joined = Api(state, port).call("POST", "/v1/hosts/join", {"token": m.ca.create_join_token(host),
                                                                      "csr": csr})
    assert status == 200
    cert, pem = tmp / f"{host}.crt", tmp / f"{host}.key"
    cert.write_text(joined["certificate"])
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return Api(state, port, (str(cert), str(pem)))


def test_applied_farms_are_placed_on_reporting_hosts_and_each_gets_its_part(
        manager: tuple[Path, int, str], tmp_path: Path) -> None:
    state, port, admin = manager
    m = Manager(state)
    gks = {h: _join(state, port, m, h, tmp_path) for h in ("h1", "h2", "h3")}
    for h, gk in gks.items():
        assert gk.call("PUT", f"/v1/hosts/{h}/status", {"vcpus": 8, "memory_mib": 8192, "state": "ready",
                                                       "running": []})[0] == 200
    api = Api(state, port)
    status, applied = api.call("PUT", "/v1/farms/demo", DEMO, admin)
    assert status == 200 and applied["status"]["conditions"]["Placed"] is True
    parts = {h: gk.call("GET", f"/v1/hosts/{h}/desired")[1] for h, gk in gks.items()}
    names = sorted(vm["name"] for p in parts.values() for vm in p["vms"])
    assert names == ["demo--db-0", "demo--web-0", "demo--web-1", "demo--web-2"]
    assert api.call("GET", "/v1/hosts/h1/desired")[0] == 403  # no certificate
    assert gks["h2"].call("GET", "/v1/hosts/h1/desired")[0] == 403  # someone else's
    # Scaling web 3 -> 2 removes exactly web-2 from the hosts' desired state.
    api.call("PUT", "/v1/farms/demo", DEMO.replace("replicas: 3", "replicas: 2"), admin)
    names = sorted(vm["name"] for h, gk in gks.items() for vm in gk.call("GET", f"/v1/hosts/{h}/desired")[1]["vms"])
    assert names == ["demo--db-0", "demo--web-0", "demo--web-1"]
    events = api.call("GET", "/v1/farms/demo", token=admin)[1]["events"]
    assert [e["type"] for e in events].count("Planned") == 2


def test_plan_is_a_dry_run_that_stores_nothing(manager: tuple[Path, int, str], tmp_path: Path) -> None:
    state, port, admin = manager
    m = Manager(state)
    for h in ("h1", "h2", "h3"):
        _join(state, port, m, h, tmp_path).call("PUT", f"/v1/hosts/{h}/status",
                                                 {"vcpus": 8, "memory_mib": 8192, "running": []})
    api = Api(state, port)
    status, plan = api.call("POST", "/v1/farms/demo/plan", DEMO, admin)
    assert status == 200 and plan["changes"] and len(plan["create"]) == 4
    assert api.call("GET", "/v1/farms/demo", token=admin)[0] == 404  # nothing stored
    api.call("PUT", "/v1/farms/demo", DEMO, admin)
    assert api.call("POST", "/v1/farms/demo/plan", DEMO, admin)[1]["changes"] is False
    bigger = api.call("POST", "/v1/farms/demo/plan", DEMO.replace("replicas: 3", "replicas: 4"), admin)[1]
    assert bigger["changes"] and bigger["create"] == [] and list(bigger["unplaced"]) == ["web-3"]  # 3 hosts
    smaller = api.call("POST", "/v1/farms/demo/plan", DEMO.replace("replicas: 3", "replicas: 2"), admin)[1]
    assert [i["name"] for i in smaller["delete"]] == ["web-2"] and smaller["create"] == []
    status, bad = api.call("POST", "/v1/farms/demo/plan", DEMO.replace("128Mi", "lots", 1), admin)
    assert status == 400 and bad["problems"]


def test_migrating_an_instance_checks_the_destination_then_hands_the_move_to_both_gatekeepers(
        manager: tuple[Path, int, str], tmp_path: Path) -> None:
    state, port, admin = manager
    m = Manager(state)
    gks = {h: _join(state, port, m, h, tmp_path) for h in ("h1", "h2", "h3", "h4")}
    for h, gk in gks.items():
        extra = {"migration_uri": "qemu+tcp://127.0.0.1/system"} if h != "h4" else {}  # where they report from
        gk.call("PUT", f"/v1/hosts/{h}/status", {"vcpus": 8, "memory_mib": 8192, "running": [], **extra})
    api = Api(state, port)
    api.call("PUT", "/v1/farms/demo", DEMO, admin)
    where = {i["name"]: i["host"] for i in api.call("GET", "/v1/farms/demo", token=admin)[1]["status"]["instances"]}
    free = next(h for h in ("h1", "h2", "h3") if h != where["db-0"])

    def migrate(instance: str, to: Any, token: str = admin) -> tuple[int, Any]:
        return api.call("POST", f"/v1/farms/demo/instances/{instance}/migrate", {"to": to}, token)

    assert migrate("web-0", where["web-1"])[0] == 409  # anti-affinity: a web VM is there already
    assert "anti-affinity" in migrate("web-0", where["web-1"])[1]["error"]
    assert migrate("db-0", where["db-0"])[0] == 409  # already there
    assert migrate("db-0", "h9")[0] == 404
    assert migrate("nope-0", free)[0] == 404
    assert migrate("db-0", 7)[0] == 400
    assert "migration_uri" in migrate("db-0", "h4")[1]["error"]
    viewer = TokenStore(state / "tokens.json").create("v", "viewer", ["demo"])
    assert migrate("db-0", free, viewer)[0] == 403
    status, body = migrate("db-0", free)
    assert status == 200 and body["instance"]["migrating"]["to"] == free
    assert migrate("db-0", free)[0] == 409  # one move at a time
    dst = gks[free].call("GET", f"/v1/hosts/{free}/desired")[1]
    assert next(v for v in dst["vms"] if v["name"] == "demo--db-0")["incoming"] is True
    gks[free].call("PUT", f"/v1/hosts/{free}/status", {"vcpus": 8, "memory_mib": 8192, "running": [],
                                                       "migration_uri": "x", "prepared": ["demo--db-0"]})
    src = gks[where["db-0"]].call("GET", f"/v1/hosts/{where['db-0']}/desired")[1]
    assert next(v for v in src["vms"] if v["name"] == "demo--db-0")["migrate_to"]["uri"] == "qemu+tcp://127.0.0.1/system"
    events = api.call("GET", "/v1/farms/demo", token=admin)[1]["events"]
    assert events[-1]["type"] == "Migrating"


def test_an_admin_takes_a_host_out_of_placement_and_a_silent_host_is_down(
        manager: tuple[Path, int, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, port, admin = manager
    m = Manager(state)
    gks = {h: _join(state, port, m, h, tmp_path) for h in ("h1", "h2", "h3", "h4")}
    for h, gk in gks.items():
        gk.call("PUT", f"/v1/hosts/{h}/status", {"vcpus": 8, "memory_mib": 8192, "running": []})
    api = Api(state, port)
    viewer = TokenStore(state / "tokens.json").create("v", "viewer", ["demo"])
    assert api.call("PUT", "/v1/hosts/h1/state", {"state": "maintenance"}, viewer)[0] == 403
    assert api.call("PUT", "/v1/hosts/h1/state", {"state": "broken"}, admin)[0] == 400
    assert api.call("PUT", "/v1/hosts/h9/state", {"state": "ready"}, admin)[0] == 404
    assert api.call("PUT", "/v1/hosts/h1/state", {"state": "maintenance"}, admin)[0] == 200
    _join(state, port, m, "h1", tmp_path)  # joining again keeps the state an admin set
    hosts = {h["name"]: h for h in api.call("GET", "/v1/hosts", token=admin)[1]}
    assert hosts["h1"]["state"] == "maintenance" and hosts["h2"]["state"] == "ready"
    api.call("PUT", "/v1/farms/demo", DEMO, admin)
    placed = {i["host"] for i in api.call("GET", "/v1/farms/demo", token=admin)[1]["status"]["instances"]}
    assert "h1" not in placed
    # A host that stops reporting is down: nothing new goes there, and it says why.
    import softudc.manager.hosts as manager_hosts

    monkeypatch.setattr(manager_hosts, "HOST_DOWN_AFTER_S", -1.0)
    hosts = {h["name"]: h for h in api.call("GET", "/v1/hosts", token=admin)[1]}
    assert {h["state"] for h in hosts.values()} == {"down"}
    status, plan = api.call("POST", "/v1/farms/demo/plan", DEMO.replace("replicas: 3", "replicas: 4"), admin)
    assert status == 200 and "h2: down" in plan["unplaced"]["web-3"]


def test_the_manager_exports_farms_hosts_and_events_as_prometheus_metrics(
        manager: tuple[Path, int, str], tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    state, port, admin = manager
    m = Manager(state)
    for h in ("h1", "h2", "h3"):
        _join(state, port, m, h, tmp_path).call("PUT", f"/v1/hosts/{h}/status",
                                                 {"vcpus": 8, "memory_mib": 8192, "running": []})
    m.put_farm(m.tokens.authenticate(f"Bearer {admin}"), "demo", DEMO, None)
    text = generate_latest(m.registry).decode()
    assert 'softudc_manager_instances{farm="demo",phase="placed"} 4.0' in text
    assert 'softudc_manager_farm_ready{farm="demo"} 0.0' in text  # nothing runs yet
    assert 'softudc_manager_hosts{state="ready"} 3.0' in text
    assert 'softudc_manager_hosts{state="standby"} 0.0' in text  # every state has its series, 0 included
    assert 'softudc_manager_events_total{type="Applied"} 1.0' in text


def test_the_event_log_shows_farms_and_hosts_to_admins_and_only_their_farms_to_others(
        manager: tuple[Path, int, str], tmp_path: Path) -> None:
    state, port, admin = manager
    m = Manager(state)
    _join(state, port, m, "h1", tmp_path).call("PUT", "/v1/hosts/h1/status", {"vcpus": 8, "memory_mib": 8192})
    api = Api(state, port)
    api.call("PUT", "/v1/farms/demo", DEMO, admin)
    api.call("PUT", "/v1/farms/other", DEMO.replace("name: demo", "name: other"), admin)
    api.call("PUT", "/v1/hosts/h1/state", {"state": "maintenance"}, admin)
    status, events = api.call("GET", "/v1/events", token=admin)
    assert status == 200 and {(e["kind"], e["name"]) for e in events} >= {("farm", "demo"), ("farm", "other"),
                                                                           ("host", "h1")}
    assert [e["type"] for e in api.call("GET", "/v1/events?kind=host&name=h1", token=admin)[1]] == ["State"]
    assert len(api.call("GET", "/v1/events?limit=1", token=admin)[1]) == 1
    assert api.call("GET", "/v1/events?limit=0", token=admin)[0] == 400
    viewer = TokenStore(state / "tokens.json").create("v", "viewer", ["demo"])
    mine = api.call("GET", "/v1/events", token=viewer)[1]
    assert mine and {e["name"] for e in mine} == {"demo"}
    assert api.call("GET", "/v1/events?kind=host", token=viewer)[0] == 403
    assert api.call("GET", "/v1/events?name=other", token=viewer)[0] == 404


def test_a_gatekeeper_long_polls_its_desired_state_and_hears_of_a_change_at_once(
        manager: tuple[Path, int, str], tmp_path: Path) -> None:
    import threading

    state, port, admin = manager
    m = Manager(state)
    gk = _join(state, port, m, "h1", tmp_path)
    gk.call("PUT", "/v1/hosts/h1/status", {"vcpus": 8, "memory_mib": 8192, "running": []})
    status, first = gk.call("GET", "/v1/hosts/h1/desired")
    assert status == 200 and first["vms"] == [] and first["etag"]
    # Nothing changes: after the wait, the same state and etag.
    same = gk.call("GET", f"/v1/hosts/h1/desired?since={first['etag']}&wait=0.2")[1]
    assert same["etag"] == first["etag"]
    assert gk.call("GET", "/v1/hosts/h1/desired?wait=nan")[0] == 400
    # A farm is applied while the host waits (up to 30 s): the answer comes with the change.
    answer: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: answer.update(
        gk.call("GET", f"/v1/hosts/h1/desired?since={first['etag']}&wait=30")[1]))
    waiter.start()
    Api(state, port).call("PUT", "/v1/farms/demo", DEMO.replace("replicas: 3", "replicas: 1"), admin)
    waiter.join(timeout=10)
    assert not waiter.is_alive(), "the long poll did not return when the farm changed"
    assert answer["etag"] != first["etag"] and {v["name"] for v in answer["vms"]} == {"demo--db-0", "demo--web-0"}


def test_a_malformed_gatekeeper_report_is_refused_and_planning_goes_on(
        manager: tuple[Path, int, str], tmp_path: Path) -> None:
    state, port, admin = manager
    m = Manager(state)
    gks = {h: _join(state, port, m, h, tmp_path) for h in ("h1", "h2")}
    good = {"vcpus": 8, "memory_mib": 8192, "running": []}
    for h, gk in gks.items():
        assert gk.call("PUT", f"/v1/hosts/{h}/status", good)[0] == 200
    for bad, why in (({"vcpus": "8"}, "vcpus: expected int"), ({"vcpus": 0}, "vcpus: 0 must be positive"),
                     ({"running": "demo--web-0"}, "running: expected list"),
                     ({"sizes": {"demo--web-0": 3}}, "sizes: every entry must be a list"),
                     ({"migrations": []}, "migrations: expected dict")):
        status, body = gks["h1"].call("PUT", "/v1/hosts/h1/status", {**good, **bad})
        assert status == 400 and why in body["error"] and "nothing stored" in body["error"], body
    status, applied = Api(state, port).call("PUT", "/v1/farms/demo", DEMO.replace("replicas: 3", "replicas: 1"),
                                            admin)
    assert status == 200 and applied["status"]["conditions"]["Placed"] is True


def test_r13_cancel_is_in_the_openapi_document() -> None:
    doc = openapi_document()
    body = doc["paths"]["/v1/farms/{name}/instances/{instance}/migrate"]["post"]["requestBody"]
    schema = doc["components"]["schemas"][body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert schema["properties"]["cancel"]["type"] == "boolean" and schema["additionalProperties"] is False


def test_every_answer_is_counted_and_timed_by_route_and_status(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    admin = init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    server = serve(m, "127.0.0.1", 0)
    try:
        api = Api(tmp_path, server.server_address[1])
        for _ in range(3):
            api.call("GET", "/v1/farms", token=admin)
        api.call("GET", "/v1/farms")  # no token
        api.call("GET", "/v1/nowhere", token=admin)
        api.call("PUT", "/v1/farms/demo", "x" * (2 << 20), admin)
    finally:
        server.shutdown()
    text = generate_latest(m.registry).decode()
    for line in ('softudc_manager_requests_total{route="list_farms",status="200"} 3.0',
                 'softudc_manager_requests_total{route="list_farms",status="401"} 1.0',
                 'softudc_manager_requests_total{route="unknown",status="404"} 1.0',
                 'softudc_manager_requests_total{route="unknown",status="413"} 1.0',
                 'softudc_manager_request_duration_seconds_count{route="list_farms"} 4.0',
                 'softudc_manager_request_duration_seconds_count{route="unknown"} 2.0'):
        assert line in text, text
    total = m.registry.get_sample_value("softudc_manager_request_duration_seconds_sum", {"route": "list_farms"})
    assert total is not None and total > 0


def test_manager_status_from_the_leader_and_a_follower_and_the_leaders_events(tmp_path: Path) -> None:
    from softudc.manager.leader import FileLeadership

    admin = init(tmp_path, ["127.0.0.1"])
    viewer = TokenStore(tmp_path / "tokens.json").create("v", "viewer", ["demo"])
    managers = [Manager(tmp_path, manager_id=n, leadership=FileLeadership(tmp_path / "state.db", n, f"https://{n}"))
                for n in ("a", "b")]
    managers[0].start()
    assert managers[0].settle()  # a leads (it took the lock first)
    servers = [serve(m, "127.0.0.1", 0) for m in managers]
    try:
        leader, follower = (Api(tmp_path, s.server_address[1]) for s in servers)
        assert follower.call("PUT", "/v1/farms/demo", DEMO, admin)[0] == 200  # the follower stores, a plans
        assert follower.call("GET", "/v1/manager/status")[0] == 401
        status, s = follower.call("GET", "/v1/manager/status", token=viewer)  # any token will do
        assert status == 200 and s["id"] == "b" and s["role"] == "follower"
        assert s["leader"]["id"] == "a" and s["leader"]["url"] == "https://a" and s["leader"]["term"] == 1
        assert s["store"]["backend"] == "sqlite" and s["store"]["size"] > 0 and s["lag"] >= 0
        assert {(m["id"], m["role"]) for m in s["members"]} == {("a", "leader"), ("b", "follower")}
        s = leader.call("GET", "/v1/manager/status", token=admin)[1]
        assert s["role"] == "leader" and s["lag"] == 0 and s["leader"]["reconciled"] == s["revision"]
        events = follower.call("GET", "/v1/events?kind=manager", token=admin)[1]
        assert [(e["name"], e["type"]) for e in events] == [("a", "Leader")]
        assert "became leader (term 1" in events[0]["message"]
        assert follower.call("GET", "/v1/events?kind=manager", token=viewer)[0] == 403
        assert managers[0].registry.get_sample_value("softudc_manager_leader") == 1
        assert managers[1].registry.get_sample_value("softudc_manager_leader") in (0, None)
    finally:
        for server in servers:
            server.shutdown()
        for m in managers:
            m.close()


def test_a_store_that_does_not_answer_is_a_503_to_try_again(tmp_path: Path) -> None:
    """etcd without a quorum (here: nobody listening at the URL) is a 503 with Retry-After, naming
    the store, not a 500: a client (the CLI, a gatekeeper) tries again or another manager."""
    import httpx

    from softudc.manager.storeurl import open_store

    state = tmp_path / "manager"
    admin = init(state, ["127.0.0.1"])
    store = open_store(f"etcd://127.0.0.1:{free_port()}", state, timeout=0.5, cache=False)
    server = serve(Manager(state, store=store), "127.0.0.1", 0)
    try:
        with httpx.Client(base_url=f"https://127.0.0.1:{server.server_address[1]}", timeout=30,
                          verify=ssl.create_default_context(cafile=str(state / "pki" / "ca.crt")),
                          headers={"Authorization": f"Bearer {admin}"}) as api:
            r = api.get("/v1/farms")
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        assert "the store is unavailable" in r.json()["error"] and "manager status" in r.json()["error"]
    finally:
        server.shutdown()
        store.close()
