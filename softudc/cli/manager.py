"""`softudc init` and `softudc manager`: the manager's state directory and its API daemon, one of
a group on a shared store (`--store`, `--id`, `--advertise`; docs/ha.md); `softudc manager status`
(the group's leader, members, store health and lag) and `softudc manager backup|restore FILE`
(softudc/cli/backup.py)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server

from softudc.atomicfile import write_atomic
from softudc.cli.connect import add_arguments, connect
from softudc.cli.errors import CliError, ok
from softudc.lab.state import default_state_dir

if TYPE_CHECKING:
    from softudc.manager.leader import Leadership
    from softudc.manager.store import Store


def _dir(a: argparse.Namespace) -> Path:
    return Path(a.state_dir or default_state_dir()) / "manager"


def cmd_init(a: argparse.Namespace) -> None:
    from softudc.manager.service import init
    from softudc.pki import PkiError

    d = _dir(a)
    try:
        token = init(d, a.address)
    except PkiError as e:
        raise CliError(str(e)) from None
    saved = d / "admin.token"
    write_atomic(saved, (token + "\n").encode())  # 0600 from its first byte
    print(f"manager state in {d}: CA, server certificate for {', '.join(a.address)}, store")
    print(f"admin token: {token}\n  saved in {saved} (0600): `softudc get farms` on this host uses it; "
          "elsewhere pass --manager URL --ca CA --token-file FILE")


def _leadership(url: str | None, store: Store, state_dir: Path, id: str, advertise: str) -> Leadership:
    """The group this manager belongs to, by its store: an flock next to a SQLite file, a lease on
    etcd (its own client, with a short timeout: it bounds how soon a dead leader is noticed)."""
    from softudc.etcd.client import EtcdClient
    from softudc.manager.etcdleader import EtcdLeadership
    from softudc.manager.leader import FileLeadership
    from softudc.manager.storeurl import etcd_endpoints, sqlite_path

    if url and url.startswith("etcd://"):
        endpoints, prefix = etcd_endpoints(url)
        return EtcdLeadership(EtcdClient(endpoints, timeout=1.0), prefix, id, advertise)
    return FileLeadership(sqlite_path(url) if url else state_dir / "state.db", id, advertise)


def _open(a: argparse.Namespace, host: str, port: str) -> Any:
    from softudc.manager.service import Manager
    from softudc.manager.storeurl import StoreURLError, open_store
    from softudc.pki import PkiError

    manager_id = a.id or f"{socket.gethostname()}-{port}"
    advertise = a.advertise or f"https://{host}:{port}"
    try:
        store = open_store(a.group_store, _dir(a))
    except StoreURLError as e:
        raise CliError(f"{e} (--store)") from None
    try:
        return Manager(_dir(a), store=store, manager_id=manager_id,
                       leadership=_leadership(a.group_store, store, _dir(a), manager_id, advertise))
    except PkiError as e:
        store.close()
        raise CliError(str(e)) from None


def cmd_manager(a: argparse.Namespace) -> None:
    from softudc.manager.daemon import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per etcd request
    host, port = a.listen.rsplit(":", 1)
    m = _open(a, host, port)
    try:
        server = serve(m, host, int(port))
    except OSError as e:
        m.close()
        raise CliError(f"{e} (--listen {a.listen})") from None
    if not a.advertise:  # the port bound (--listen HOST:0 picks one)
        m.leadership.url = f"https://{host}:{server.server_address[1]}"
    m.start()  # the group's campaign starts now; as leader the controllers run (time-based rules)
    if a.metrics:
        mhost, mport = a.metrics.rsplit(":", 1)
        start_http_server(int(mport), addr=mhost, registry=m.registry)
    print(f"manager {m.manager_id}: API on https://{host}:{server.server_address[1]}/v1 (OpenAPI: /v1/openapi.json), "
          f"store {a.group_store or 'sqlite (the state directory)'}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    m.close()  # resigns: another manager of the group leads at once
    m.store.close()


def cmd_status(a: argparse.Namespace) -> None:

    status = ok(*connect(a).call("GET", "/v1/manager/status"))
    if a.output == "json":
        print(json.dumps(status, indent=2))
        return
    for line in status_lines(status):
        print(line)


def _ago(t: float) -> str:
    return f"{max(time.time() - t, 0):.0f} s ago"


def status_lines(s: dict[str, Any]) -> list[str]:
    """`softudc manager status` as a table."""
    leader = s.get("leader")
    lines = [f"manager   {s['id']} ({s['role']}) {s['url']}"]
    if leader:
        lines.append(f"leader    {leader['id']} {leader['url']}, term {leader['term']}, since {_ago(leader['since'])}")
    else:
        lines.append("leader    none (the group is electing one: its events are at GET /v1/events?kind=manager)")
    lag = "unknown" if s.get("lag") is None else f"{s['lag']} revision(s) not yet looked at by the leader"
    lines.append(f"store     {s['store']['backend']}, {'healthy' if s['store']['healthy'] else 'UNHEALTHY'}, "
                 f"revision {s['revision']}, lag {lag}")
    store = s["store"]
    if store.get("path"):
        lines.append(f"          {store['path']} ({store.get('size', 0) / 1024:.0f} KiB)")
    for e in store.get("endpoints") or []:
        state = f"raft term {e['raft_term']} index {e['raft_index']}, {e['db_size'] // 1024} KiB" if e["ok"] \
            else f"DOWN: {e['error']}"
        lines.append(f"          {e['endpoint']}: {state}")
    lines.append(f"{'MEMBER':<24} {'ROLE':<9} {'URL':<32} LAST SEEN")
    for member in s.get("members", []):
        lines.append(f"{member['id']:<24} {member['role']:<9} {member['url']:<32} {_ago(member['last_seen'])}")
    return lines


def cmd_join_token(a: argparse.Namespace) -> None:
    """A one-time join token, kept (as its digest) in the manager's store: with a shared store
    (`--store etcd://...`) any manager of the group honours it, once."""
    from softudc.manager.storetokens import StoreJoinTokens
    from softudc.manager.storeurl import StoreURLError, open_store
    from softudc.pki import CertificateAuthority, PkiError

    try:
        CertificateAuthority.load(_dir(a) / "pki")  # this is a manager's host (`softudc init` ran here)
        store = open_store(a.store, _dir(a), cache=False)
    except (PkiError, StoreURLError) as e:
        raise CliError(str(e)) from None
    try:
        token = StoreJoinTokens(store).create(a.name, a.ttl)
    finally:
        store.close()
    print(token)
    print(f"one-time join token for host {a.name}, valid {a.ttl:.0f} s; joining again replaces the host's "
          "certificate (the old one is refused)", file=sys.stderr)


def add_join_token_parser(hosts: Any) -> None:
    """`softudc host join-token NAME`, run on a manager's host (it writes the manager's store)."""
    j = hosts.add_parser("join-token", help="a one-time token for a gatekeeper to join as NAME (on a manager's host)")
    j.add_argument("name")
    j.add_argument("--ttl", type=float, default=3600.0, help="seconds the token stays valid")
    j.add_argument("--store", metavar="URL", help="the managers' store (as `softudc manager --store`); default: "
                                                  "the state directory's SQLite file")
    j.set_defaults(fn=cmd_join_token)


def add_parsers(sub: Any) -> None:
    i = sub.add_parser("init", help="create the manager's CA, server certificate, store and admin token")
    i.add_argument("--address", action="append", default=None, help="address the API is reached at (repeatable)")
    i.set_defaults(fn=cmd_init)
    m = sub.add_parser("manager", help="run the manager's API (one of a group on a shared store: docs/ha.md)")
    m.add_argument("--listen", default="127.0.0.1:8443", metavar="ADDRESS:PORT",
                   help="where the API listens (PORT 0: a free one)")
    m.add_argument("--metrics", default=None, help="ADDRESS:PORT for Prometheus")
    m.add_argument("--store", dest="group_store", metavar="URL", default=None,
                   help="sqlite:///ABS/PATH/state.db or etcd://HOST:PORT[,HOST:PORT...][/PREFIX] "
                        "(default: state.db in the state directory)")
    m.add_argument("--id", default=None, metavar="NAME",
                   help="this manager's name in its group (default: hostname-PORT)")
    m.add_argument("--advertise", default=None, metavar="URL",
                   help="the URL of this manager's API for the others and `status` (default: https://LISTEN)")
    m.set_defaults(fn=cmd_manager)
    ms = m.add_subparsers(dest="manager_cmd", metavar="{status,backup,restore}")
    st = ms.add_parser("status", help="the group's leader, members, store health and lag")
    add_arguments(st)
    st.add_argument("-o", "--output", choices=["table", "json"], default="table")
    st.set_defaults(fn=cmd_status)
    from softudc.cli import backup

    b = ms.add_parser("backup", help="a logical backup of the store (JSON lines, 0600), from SQLite or etcd")
    backup.add_backup_arguments(b)
    r = ms.add_parser("restore", help="restore a backup into an empty store (--force: replace what is there)")
    backup.add_restore_arguments(r)
    b.set_defaults(fn=lambda a: backup.cmd_backup(_with_store(a)))
    r.set_defaults(fn=lambda a: backup.cmd_restore(_with_store(a)))


def _with_store(a: argparse.Namespace) -> argparse.Namespace:
    """`softudc manager --store URL backup FILE` names the store as `... backup FILE --store URL` does."""
    a.store = a.store or a.group_store
    return a


def init_defaults(a: argparse.Namespace) -> None:
    if getattr(a, "address", None) is None:
        a.address = ["127.0.0.1"]



