"""`softudc init` and `softudc manager`: the manager's state directory and its API daemon."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

from softudc.atomicfile import write_atomic
from softudc.cli.errors import CliError
from softudc.lab.state import default_state_dir


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


def cmd_manager(a: argparse.Namespace) -> None:
    from softudc.manager.daemon import serve
    from softudc.manager.service import Manager
    from softudc.pki import PkiError

    try:
        m = Manager(_dir(a))
    except PkiError as e:
        raise CliError(str(e)) from None
    host, port = a.listen.rsplit(":", 1)
    m.start()  # the controllers run from now on, not only once something is stored (time-based rules)
    try:
        server = serve(m, host, int(port))
    except OSError as e:
        m.close()
        raise CliError(f"{e} (--listen {a.listen})") from None
    if a.metrics:
        mhost, mport = a.metrics.rsplit(":", 1)
        start_http_server(int(mport), addr=mhost, registry=m.registry)
    print(f"manager API on https://{host}:{server.server_address[1]}/v1 (OpenAPI: /v1/openapi.json)",
          file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    m.close()


def cmd_join_token(a: argparse.Namespace) -> None:
    from softudc.pki import CertificateAuthority, PkiError

    try:
        token = CertificateAuthority.load(_dir(a) / "pki").create_join_token(a.name, a.ttl)
    except PkiError as e:
        raise CliError(str(e)) from None
    print(token)
    print(f"one-time join token for host {a.name}, valid {a.ttl:.0f} s; joining again replaces the host's "
          "certificate (the old one is refused)", file=sys.stderr)


def add_join_token_parser(hosts: Any) -> None:
    """`softudc host join-token NAME`, run on the manager's host (it writes the manager's state)."""
    j = hosts.add_parser("join-token", help="a one-time token for a gatekeeper to join as NAME (on the manager's host)")
    j.add_argument("name")
    j.add_argument("--ttl", type=float, default=3600.0, help="seconds the token stays valid")
    j.set_defaults(fn=cmd_join_token)


def add_parsers(sub: Any) -> None:
    i = sub.add_parser("init", help="create the manager's CA, server certificate, store and admin token")
    i.add_argument("--address", action="append", default=None, help="address the API is reached at (repeatable)")
    i.set_defaults(fn=cmd_init)
    m = sub.add_parser("manager", help="run the manager's API")
    m.add_argument("--listen", default="127.0.0.1:8443")
    m.add_argument("--metrics", default=None, help="ADDRESS:PORT for Prometheus")
    m.set_defaults(fn=cmd_manager)


def init_defaults(a: argparse.Namespace) -> None:
    if getattr(a, "address", None) is None:
        a.address = ["127.0.0.1"]



