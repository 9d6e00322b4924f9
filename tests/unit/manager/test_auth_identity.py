"""Who a gatekeeper is, and what the manager keeps on disk: one certificate per host name, revoked
on re-join and on removal (audit R14); join tokens redeemed once under concurrency (R15); admin
tokens never read half-written (R28); the state directory, the store and the keys private and
durable (R22)."""

from __future__ import annotations

import functools
import sqlite3
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from softudc.etcd.cluster import EtcdCluster
from softudc.manager.auth import AuthError, TokenStore
from softudc.manager.daemon import serve
from softudc.manager.service import ApiError, Manager, init
from softudc.manager.store import SqliteStore
from softudc.manager.storeurl import open_store
from softudc.pki import PkiError
from tests.unit.manager.test_api import DEMO, Api, _csr
from tests.unit.test_pki import _race

ROOT = Path(__file__).parents[3]


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[Path, int, str]]:
    state = tmp_path / "manager"
    admin = init(state, ["127.0.0.1"])
    server = serve(Manager(state), "127.0.0.1", 0)
    yield state, server.server_address[1], admin
    server.shutdown()


def _join(state: Path, port: int, host: str, tmp: Path, tag: str) -> Api:
    csr, key = _csr(host)
    token = Manager(state).ca.create_join_token(host)
    status, joined = Api(state, port).call("POST", "/v1/hosts/join", {"token": token, "csr": csr})
    assert status == 200, joined
    cert, pem = tmp / f"{host}-{tag}.crt", tmp / f"{host}-{tag}.key"
    cert.write_text(joined["certificate"])
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return Api(state, port, (str(cert), str(pem)))


REPORT = {"vcpus": 8, "memory_mib": 8192, "state": "ready", "running": []}


@pytest.mark.adversarial
def test_r14_a_rejoined_host_name_refuses_its_old_certificate(manager: tuple[Path, int, str], tmp_path: Path) -> None:
    state, port, admin = manager
    old = _join(state, port, "h1", tmp_path, "old")
    assert old.call("PUT", "/v1/hosts/h1/status", REPORT)[0] == 200
    new = _join(state, port, "h1", tmp_path, "new")  # a reinstall, or a clone of the image
    for method, path, body in (("PUT", "/v1/hosts/h1/status", REPORT), ("GET", "/v1/hosts/h1/desired", None)):
        status, answer = old.call(method, path, body)
        assert status == 403 and "superseded" in answer["error"] and "join it again" in answer["error"]
        assert new.call(method, path, body)[0] == 200
    events = Api(state, port).call("GET", "/v1/events?kind=host&name=h1", token=admin)[1]
    assert [e["type"] for e in events] == ["Rejoined"]


@pytest.mark.adversarial
def test_r14_a_removed_host_is_refused_until_it_joins_again(manager: tuple[Path, int, str], tmp_path: Path) -> None:
    state, port, admin = manager
    api = Api(state, port)
    gk = _join(state, port, "h1", tmp_path, "a")
    assert gk.call("PUT", "/v1/hosts/h1/status", REPORT)[0] == 200
    viewer = TokenStore(state / "tokens.json").create("v", "viewer", ["demo"])
    assert api.call("DELETE", "/v1/hosts/h1", token=viewer)[0] == 403
    assert api.call("DELETE", "/v1/hosts/nope", token=admin)[0] == 404
    status, body = api.call("PUT", "/v1/farms/demo", DEMO.replace("replicas: 3", "replicas: 1"), admin)
    assert status == 200 and body["status"]["conditions"]["Placed"]
    status, refused = api.call("DELETE", "/v1/hosts/h1", token=admin)  # its instances would be orphaned
    assert status == 409 and refused["instances"] == ["demo/db-0", "demo/web-0"]
    status, removed = api.call("DELETE", "/v1/hosts/h1?force=true", token=admin)
    assert status == 200 and removed["removed"] is True
    for method, path, data in (("PUT", "/v1/hosts/h1/status", REPORT), ("GET", "/v1/hosts/h1/desired", None)):
        status, answer = gk.call(method, path, data)
        assert status == 403 and "not joined" in answer["error"]
    assert [h["name"] for h in api.call("GET", "/v1/hosts", token=admin)[1]] == []
    again = _join(state, port, "h1", tmp_path, "b")
    assert again.call("PUT", "/v1/hosts/h1/status", REPORT)[0] == 200
    assert gk.call("PUT", "/v1/hosts/h1/status", REPORT)[0] == 403  # the removed certificate stays refused
    assert "/v1/hosts/{name}" in api.call("GET", "/v1/openapi.json")[1]["paths"]


def test_r14_the_cli_removes_a_host(manager: tuple[Path, int, str], tmp_path: Path) -> None:
    state, port, admin = manager
    (state / "admin.token").write_text(admin)
    _join(state, port, "h2", tmp_path, "a")
    out = subprocess.run([sys.executable, "-m", "softudc.cli", "--state-dir", str(state.parent), "host", "rm", "h2",
                          "--manager", f"https://127.0.0.1:{port}"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0 and "h2: removed" in out.stdout, out.stderr
    token = subprocess.run([sys.executable, "-m", "softudc.cli", "--state-dir", str(state.parent), "host",
                            "join-token", "h2"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert token.returncode == 0, token.stderr
    m = Manager(state)  # the token is in the store: any manager of a group spends it, once
    assert m._redeem_join_token(token.stdout.strip()) == "h2"
    with pytest.raises(PkiError, match="already used"):
        m._redeem_join_token(token.stdout.strip())


def test_a_join_token_in_the_store_is_honoured_by_another_manager_once(tmp_path: Path,
                                                                       etcd_cluster: EtcdCluster) -> None:
    """`softudc host join-token --store etcd://...` on one manager's host: a gatekeeper may join
    through any manager of the group; a token from the old pki/tokens.json still works too."""
    state = tmp_path / "manager"
    init(state, ["127.0.0.1"])
    url = etcd_cluster.url + f"/t-{uuid.uuid4().hex[:12]}"
    made = subprocess.run([sys.executable, "-m", "softudc.cli", "--state-dir", str(tmp_path), "host",
                           "join-token", "h7", "--store", url], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert made.returncode == 0, made.stderr
    stores = [open_store(url, state, cache=False) for _ in range(2)]
    one, other = (Manager(state, store=s) for s in stores)
    try:
        assert other._redeem_join_token(made.stdout.strip()) == "h7"
        with pytest.raises(PkiError, match="already used"):
            one._redeem_join_token(made.stdout.strip())
        old = one.ca.create_join_token("h8")  # made in the files, before tokens moved to the store
        assert one._redeem_join_token(old) == "h8"
    finally:
        for m in (one, other):
            m.close()
        for s in stores:
            s.close()


@pytest.mark.adversarial
def test_r15_concurrent_joins_through_the_manager_issue_one_certificate(tmp_path: Path) -> None:
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    csr, _ = _csr("x")
    for _ in range(50):
        token = m.ca.create_join_token("h1")
        results = _race(4, functools.partial(m.join, {"token": token, "csr": csr}))
        assert sorted(r.status if isinstance(r, ApiError) else 200 for r in results) == [200, 403, 403, 403]


def test_r15_a_bad_csr_is_refused_before_the_token_is_spent(tmp_path: Path) -> None:
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    token = m.ca.create_join_token("h1")
    with pytest.raises(ApiError) as bad:
        m.join({"token": token, "csr": "not a request"})
    assert bad.value.status == 400
    assert m.join({"token": token, "csr": _csr("h1")[0]})["host"] == "h1"


@pytest.mark.adversarial
def test_r28_api_requests_never_read_a_half_written_admin_tokens_file(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    admin = tokens.create("admin", "admin")
    stop = threading.Event()
    failures: list[str] = []

    def authenticate() -> None:
        while not stop.is_set():
            try:
                tokens.authenticate(f"Bearer {admin}")
            except (AuthError, ValueError) as e:
                failures.append(repr(e))

    readers = [threading.Thread(target=authenticate) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(150):
            tokens.create(f"v{i}", "viewer", ["demo"])
    finally:
        stop.set()
        for t in readers:
            t.join(10)
    assert failures == []
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600


def test_r22_the_state_dir_is_0700_and_every_secret_in_it_0600(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "softudc.cli", "--state-dir", str(tmp_path), "init"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    state = tmp_path / "manager"
    m = Manager(state)
    m.put_farm(m.tokens.authenticate("Bearer " + (state / "admin.token").read_text().strip()), "demo", DEMO, None)
    modes = {p.relative_to(state).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in state.rglob("*")
             if not p.name.startswith(".")}
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert modes["pki"] == 0o700
    for secret in ("state.db", "state.db-wal", "tokens.json", "admin.token", "pki/ca.key", "pki/server.key"):
        assert modes[secret] == 0o600, (secret, oct(modes[secret]))
    assert not [p for p in state.rglob("*.tmp")]


def test_r22_an_existing_loose_state_dir_and_store_are_narrowed(tmp_path: Path) -> None:
    init(tmp_path, ["127.0.0.1"])
    for p in (tmp_path, tmp_path / "state.db"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    Manager(tmp_path)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state.db").stat().st_mode) == 0o600


def test_r22_the_store_commits_with_synchronous_full(tmp_path: Path) -> None:
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    assert isinstance(m.store, SqliteStore)
    assert m.store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert sqlite3.connect(tmp_path / "state.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_r22_init_refuses_to_replace_a_key(tmp_path: Path) -> None:
    init(tmp_path, ["127.0.0.1"])
    (tmp_path / "pki" / "ca.key").unlink()  # the CA check passes; server.key must still not be overwritten
    (tmp_path / "pki" / "ca.crt").unlink()
    with pytest.raises(FileExistsError):
        init(tmp_path, ["127.0.0.1"])


@pytest.mark.adversarial
def test_r14_a_host_joined_before_certificates_were_recorded_is_bound_to_the_first_one_it_shows(
        manager: tuple[Path, int, str], tmp_path: Path) -> None:
    state, port, admin = manager
    own = _join(state, port, "h1", tmp_path, "own")
    m = Manager(state)
    host = m.store.get("host", "h1")
    assert host is not None
    m.store.put("host", "h1", {k: v for k, v in host.spec.items() if k != "certificate"})  # as an older manager left it
    clone = m.ca.issue_client("h1")  # another certificate of that name, as a copied disk would hold
    cert, key = tmp_path / "clone.crt", tmp_path / "clone.key"
    cert.write_bytes(clone.cert_pem)
    key.write_bytes(clone.key_pem)
    assert own.call("PUT", "/v1/hosts/h1/status", REPORT)[0] == 200  # the first one shown is bound
    status, answer = Api(state, port, (str(cert), str(key))).call("PUT", "/v1/hosts/h1/status", REPORT)
    assert status == 403 and "superseded" in answer["error"]
    assert own.call("GET", "/v1/hosts/h1/desired")[0] == 200
    events = Api(state, port).call("GET", "/v1/events?kind=host&name=h1", token=admin)[1]
    assert [e["type"] for e in events] == ["Bound"]
