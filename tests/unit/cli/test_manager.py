"""The admin commands against a manager reached by URL (not a lab): `softudc init` saves the admin
token where the CLI finds it; a viewer token reads but cannot apply; clear errors without a CA;
two `softudc manager` daemons of one group: `softudc manager status`, a leader killed and replaced."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from softudc.manager.auth import TokenStore
from softudc.manager.daemon import serve
from softudc.manager.service import Manager

ROOT = Path(__file__).parents[3]


def softudc(state: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTUDC_")}
    if token:
        env["SOFTUDC_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "softudc.cli", "--state-dir", str(state), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_init_then_apply_get_and_delete_by_url(tmp_path: Path) -> None:
    out = softudc(tmp_path, "init", "--address", "127.0.0.1")
    assert out.returncode == 0, out.stderr
    saved = tmp_path / "manager" / "admin.token"
    assert str(saved) in out.stdout and saved.stat().st_mode & 0o777 == 0o600
    server = serve(Manager(tmp_path / "manager"), "127.0.0.1", 0)
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        # No host has joined: stored, but nothing can be placed; apply says so and exits 1.
        applied = softudc(tmp_path, "apply", "-f", "configs/farms/demo.yaml", "--manager", url)
        assert applied.returncode == 1 and "farm demo applied" in applied.stdout
        assert "4 instance(s) of demo cannot be placed" in applied.stderr, applied.stderr
        assert "web-0: cannot be placed: there are no hosts" in applied.stdout
        farms = json.loads(softudc(tmp_path, "get", "farms", "-o", "json", "--manager", url).stdout)
        assert [f["name"] for f in farms] == ["demo"]
        # A viewer token (from $SOFTUDC_TOKEN) reads, and is refused an apply with a clear message.
        viewer = TokenStore(tmp_path / "manager" / "tokens.json").create("ann", "viewer", ["demo"])
        assert softudc(tmp_path, "get", "farms", "--manager", url, token=viewer).returncode == 0
        refused = softudc(tmp_path, "apply", "-f", "configs/farms/demo.yaml", "--manager", url, token=viewer)
        assert refused.returncode == 1 and "may not change farm 'demo'" in refused.stderr
        gone = softudc(tmp_path, "delete", "farm", "demo", "--manager", url, "--wait")
        assert gone.returncode == 0, gone.stderr
        assert softudc(tmp_path, "get", "farms", "--manager", url).stderr.strip() == "no farms"
    finally:
        server.shutdown()


def test_without_a_ca_the_cli_says_what_to_pass(tmp_path: Path) -> None:
    out = softudc(tmp_path, "get", "farms", "--manager", "https://127.0.0.1:1")
    assert out.returncode == 1 and "--ca" in out.stderr and "no CA certificate" in out.stderr


def _daemon(state: Path, name: str, log: Path, *store: str) -> tuple[subprocess.Popen[bytes], str]:
    """`softudc manager` on a free port; returns the process and its URL once it listens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTUDC_")}
    p = subprocess.Popen([sys.executable, "-m", "softudc.cli", "--state-dir", str(state), "manager", "--listen",
                          "127.0.0.1:0", "--id", name, *store], cwd=ROOT, env=env, stderr=log.open("wb"))
    deadline = time.monotonic() + 30
    while not (m := re.search(r"API on (https://127\.0\.0\.1:\d+)/v1", log.read_text())):
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return p, m[1]


def _status(state: Path, urls: str) -> dict[str, Any]:
    out = softudc(state, "manager", "status", "-o", "json", "--manager", urls)
    assert out.returncode == 0, out.stderr
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
def test_two_managers_on_one_store_one_leads_and_the_other_takes_over(tmp_path: Path, backend: str,
                                                                      request: pytest.FixtureRequest) -> None:
    assert softudc(tmp_path, "init", "--address", "127.0.0.1").returncode == 0
    store: tuple[str, ...] = ()
    if backend == "etcd":
        store = ("--store", request.getfixturevalue("etcd_cluster").url + request.getfixturevalue("etcd_prefix"))
    procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for name in ("m1", "m2"):
            procs[name] = _daemon(tmp_path, name, tmp_path / f"{name}.log", *store)
        urls = ",".join(url for _, url in procs.values())
        deadline = time.monotonic() + 10
        while not (s := _status(tmp_path, urls))["leader"] or len(s["members"]) < 2:
            assert time.monotonic() < deadline, s
            time.sleep(0.2)
        first = s["leader"]["id"]
        assert s["leader"]["url"] == procs[first][1] and {m["id"] for m in s["members"]} == {"m1", "m2"}
        table = softudc(tmp_path, "manager", "status", "--manager", urls).stdout
        assert f"leader    {first} {procs[first][1]}, term 1" in table and f"store     {backend}, healthy" in table
        other = next(n for n in procs if n != first)
        procs[first][0].kill()  # by PID, as a crash
        procs[first][0].wait()
        t0 = time.monotonic()
        while (s := _status(tmp_path, procs[other][1]))["role"] != "leader":
            assert time.monotonic() - t0 < 5, s  # the fail-over target
            time.sleep(0.1)
        print(f"\n{backend}: the leader killed, {other} led after {time.monotonic() - t0:.2f} s (seen by the CLI)")
        assert s["leader"]["term"] == 2
        applied = softudc(tmp_path, "apply", "-f", "configs/farms/demo.yaml", "--manager", urls)
        assert "farm demo applied" in applied.stdout and "cannot be placed" in applied.stdout  # planned by the new one
        procs[other][0].terminate()  # a clean stop resigns
        assert procs[other][0].wait(15) == 0
        assert f"{other} stepped down: it resigned" in (tmp_path / f"{other}.log").read_text()
    finally:
        for p, _ in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_backup_of_the_sqlite_store_restores_into_etcd_from_the_cli(tmp_path: Path, etcd_cluster: Any,
                                                                     etcd_prefix: str) -> None:
    from softudc.manager.storeurl import open_store

    assert softudc(tmp_path, "init", "--address", "127.0.0.1").returncode == 0
    m = Manager(tmp_path / "manager")
    m.store.put("farm", "demo", {"descriptor": "x"})
    m.close()
    m.store.close()
    saved = tmp_path / "backup.jsonl"
    out = softudc(tmp_path, "manager", "backup", str(saved))
    assert out.returncode == 0 and saved.stat().st_mode & 0o777 == 0o600, out.stderr
    url = etcd_cluster.url + etcd_prefix
    out = softudc(tmp_path, "manager", "--store", url, "restore", str(saved))  # the URL before the command too
    assert out.returncode == 0, out.stderr
    store = open_store(url, tmp_path)
    try:
        restored = store.get("farm", "demo")
        assert restored is not None and restored.spec == {"descriptor": "x"}
    finally:
        store.close()
    again = softudc(tmp_path, "manager", "restore", str(saved), "--store", url)
    assert again.returncode == 1 and "--force" in again.stderr  # not into a store that holds something


def test_the_status_table_says_when_nobody_leads_and_which_etcd_endpoint_is_down() -> None:
    from softudc.cli.manager import status_lines

    now = time.time()
    lines = status_lines({
        "id": "m2", "url": "https://b:8443", "role": "follower", "leader": None, "revision": 42, "lag": None,
        "store": {"backend": "etcd", "healthy": True, "endpoints": [
            {"endpoint": "http://e0:2379", "ok": True, "raft_term": 3, "raft_index": 99, "db_size": 40960, "error": ""},
            {"endpoint": "http://e1:2379", "ok": False, "raft_term": 0, "raft_index": 0, "db_size": 0,
             "error": "connection refused"}]},
        "members": [{"id": "m2", "url": "https://b:8443", "role": "follower", "last_seen": now}]})
    text = "\n".join(lines)
    assert "leader    none (the group is electing one" in text and "lag unknown" in text
    assert "http://e0:2379: raft term 3 index 99, 40 KiB" in text and "http://e1:2379: DOWN: connection refused" in text
    assert lines[-1].split()[:3] == ["m2", "follower", "https://b:8443"]
