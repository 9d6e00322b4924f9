"""vnetd's configuration file (TOML); configs/vnetd.example.toml documents each key."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softudc.configfile import ConfigError as ConfigError  # re-exported for the daemons
from softudc.configfile import ipv4_list, read_toml


@dataclass(frozen=True)
class VnetdConfig:
    name: str
    address: str
    interface: str
    api_socket: str
    key: bytes
    key_id: int = 1
    group: str = "224.10.0.1"
    ports: tuple[int, ...] = (1798, 4500)
    peers: tuple[str, ...] = ()
    hello_interval: float = 1.0
    metrics_listen: str | None = None


_KEYS = {"name", "address", "interface", "api_socket", "key", "key_id", "group", "ports", "peers",
         "hello_interval", "metrics"}


def load_config(path: str | Path) -> VnetdConfig:
    return parse_config(read_toml(path, "copy configs/vnetd.example.toml"), str(path))


def parse_config(raw: dict[str, Any], where: str = "<config>") -> VnetdConfig:
    def fail(name: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}: {name}: {msg}")

    unknown = set(raw) - _KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown key (known: {', '.join(sorted(_KEYS))})")
    for k in ("name", "address", "interface", "api_socket", "key"):
        if not isinstance(raw.get(k), str) or not raw[k]:
            raise fail(k, "required string")
    try:
        ipaddress.IPv4Address(raw["address"])
    except ValueError:
        raise fail("address", f"{raw['address']!r} is not an IPv4 address") from None
    key = _relay_key(raw["key"], fail)
    peers = ipv4_list(raw.get("peers", []), "peers", fail)
    ports = raw.get("ports", [1798, 4500])
    if not isinstance(ports, list) or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
        raise fail("ports", "must be a list of UDP ports")
    group = _multicast_group(raw.get("group", "224.10.0.1"), fail)
    hello = raw.get("hello_interval", 1.0)
    if not isinstance(hello, int | float) or isinstance(hello, bool) or not 0.05 <= hello <= 60:
        raise fail("hello_interval", "seconds between 0.05 and 60")
    metrics = raw.get("metrics", {})
    listen = metrics.get("listen") if isinstance(metrics, dict) else None
    return VnetdConfig(raw["name"], raw["address"], raw["interface"], raw["api_socket"], key,
                       int(raw.get("key_id", 1)), group, tuple(ports), tuple(peers), float(hello), listen)


def _relay_key(text: str, fail: Callable[[str, str], ConfigError]) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise fail("key", "must be hex") from None
    if len(key) < 16:
        raise fail("key", f"{len(key)} bytes; the relay key needs at least 16")
    return key


def _multicast_group(group: Any, fail: Callable[[str, str], ConfigError]) -> Any:
    try:
        if not ipaddress.IPv4Address(group).is_multicast:
            raise ValueError
    except ValueError:
        raise fail("group", f"{group!r} is not an IPv4 multicast address") from None
    return group
