"""The gatekeeper file's ``[volumes]`` table: the storage service is on when the table is there.

    [volumes]
    pool_dir = "/var/lib/softudc/pool"      # qcow2 volumes
    run_dir = "/run/softudc/volumes"        # one dir per export: QMP socket, pidfile, state
    tls_dir = "/etc/softudc/nbd"            # ca-cert.pem, server-cert.pem, server-key.pem (the
                                            # host's certificate from the manager's CA: serverAuth,
                                            # SAN = the underlay address)
    port = 10809                            # first export's port; the next ones count up
    capacity_gib = 100                      # optional: less than the filesystem
    listen = "10.100.0.2"                   # optional: default the underlay address
    thin = false                            # optional: count what volumes hold on disk, not
                                            # their sizes (sparse masters larger than the pool)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from softudc.configfile import ConfigError

KEYS = {"pool_dir", "run_dir", "tls_dir", "port", "capacity_gib", "listen", "thin"}
Fail = Callable[[str, str], ConfigError]


@dataclass(frozen=True)
class VolumesConfig:
    pool_dir: str
    run_dir: str
    tls_dir: str
    listen: str
    port: int = 10809
    capacity_bytes: int | None = None
    thin: bool = False


def parse_volumes(table: Any, underlay_address: str, fail: Fail) -> VolumesConfig:
    if not isinstance(table, dict):
        raise fail("volumes", "must be a table")
    unknown = set(table) - KEYS
    if unknown:
        raise fail(f"volumes.{sorted(unknown)[0]}", f"unknown key (known: {', '.join(sorted(KEYS))})")
    for key in ("pool_dir", "run_dir", "tls_dir"):
        if not isinstance(table.get(key), str) or not table[key].startswith("/"):
            raise fail(f"volumes.{key}", "required absolute path")
    port = table.get("port", 10809)
    if type(port) is not int or not 1024 <= port <= 65000:
        raise fail("volumes.port", f"{port!r} must be a port in 1024..65000")
    gib = table.get("capacity_gib")
    if gib is not None and (type(gib) is not int or not 0 < gib <= 1 << 20):
        raise fail("volumes.capacity_gib", f"{gib!r} must be a whole number of GiB, 1..1048576")
    listen = table.get("listen", underlay_address)
    try:
        ipaddress.IPv4Address(listen)
    except ValueError:
        raise fail("volumes.listen", f"{listen!r} is not an IPv4 address") from None
    thin = table.get("thin", False)
    if not isinstance(thin, bool):
        raise fail("volumes.thin", f"{thin!r} must be true or false")
    return VolumesConfig(table["pool_dir"], table["run_dir"], table["tls_dir"], str(listen), port,
                         None if gib is None else gib << 30, thin)
