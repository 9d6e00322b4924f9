"""Which store a manager uses, from a URL (issue 11, decision 1):

    sqlite:///ABS/PATH/state.db                  one manager (or several on one machine) on a file;
                                                 the default is <state_dir>/state.db
    etcd://HOST:PORT[,HOST:PORT...][/PREFIX]     a group of managers sharing etcd's v3 JSON gateway
                                                 (plain HTTP); PREFIX defaults to /softudc
"""

from __future__ import annotations

import re
from pathlib import Path

from softudc.etcd.client import EtcdClient
from softudc.manager.etcdstore import DEFAULT_PREFIX, EtcdStore
from softudc.manager.store import SqliteStore, Store

FORMS = ("sqlite:///ABS/PATH/state.db", "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
_ENDPOINT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")


class StoreURLError(ValueError):
    """A store URL of no known form; the message names it and the forms."""


def _bad(url: str, why: str) -> StoreURLError:
    return StoreURLError(f"store URL {url!r}: {why}; use {FORMS[0]} or {FORMS[1]}")


def sqlite_path(url: str) -> Path:
    path = url.removeprefix("sqlite://")
    if not path.startswith("/") or path == "/":
        raise _bad(url, "a SQLite URL needs an absolute path after sqlite:// (three slashes in all)")
    return Path(path)


def etcd_endpoints(url: str) -> tuple[list[str], str]:
    """(["http://h:p", ...], prefix) of an etcd:// URL."""
    rest = url.removeprefix("etcd://")
    hosts, slash, prefix = rest.partition("/")
    prefix = slash + prefix
    prefix = DEFAULT_PREFIX if prefix in ("", "/") else prefix.removesuffix("/")
    if not _PREFIX.match(prefix):
        raise _bad(url, f"the prefix {prefix!r} may hold only letters, digits and . _ ~ - between slashes")
    endpoints = []
    for part in hosts.split(","):
        m = _ENDPOINT.match(part.strip())
        if not m or not 0 < int(m["port"]) < 65536:
            raise _bad(url, f"{part.strip()!r} is not HOST:PORT (etcd's client port, usually 2379)")
        endpoints.append(f"http://{m['host']}:{int(m['port'])}")
    return endpoints, prefix


def open_store(url: str | None, state_dir: Path, timeout: float = 5.0, cache: bool = True) -> Store:
    """The store `url` names; None (or "") is the state directory's SQLite file. An etcd store
    keeps a read cache (a watched copy of the objects) unless `cache` is False (one-shot tools)."""
    if not url:
        return SqliteStore(state_dir / "state.db")
    if url.startswith("sqlite://"):
        return SqliteStore(sqlite_path(url))
    if url.startswith("etcd://"):
        endpoints, prefix = etcd_endpoints(url)
        return EtcdStore(EtcdClient(endpoints, timeout), prefix, owns_client=True, cache=cache)
    raise _bad(url, "unknown scheme")
