"""The gatekeeper's configuration file (TOML): parsed into a frozen dataclass, every error naming
the file and the field. configs/gatekeeper.example.toml documents each key."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gatekeeper.vnet.varp_cache import VarpTimers
from gatekeeper.volumes.config import VolumesConfig, parse_volumes
from softudc import libvirturi
from softudc.configfile import ConfigError as ConfigError  # re-exported for the daemons
from softudc.configfile import ipv4_list, read_toml
from softudc.model.hoststate import HOST_CAPACITY_MAX
from softudc.security.keys import VnetKeys


@dataclass(frozen=True)
class GatekeeperConfig:
    host: str
    api_socket: str
    underlay_interface: str
    underlay_address: str
    underlay_mtu: int = 1500
    transport: str = "udp"
    offload: bool = True
    datapath: str = "auto"  # auto | ebpf | userspace (gatekeeper/vnet/bpf/selection.py, docs/ebpf.md)
    varp_group: str = "224.10.0.1"
    flood: str = "multicast"
    member_hosts: tuple[str, ...] = ()
    learn: bool = True
    varp_timers: VarpTimers = field(default_factory=VarpTimers)
    metrics_listen: str | None = None
    keys_file: str | None = None
    varp_auth_window: float = 30.0
    hypervisor: HypervisorConfig | None = None
    manager: ManagerConfig | None = None
    volumes: VolumesConfig | None = None  # the storage service (gatekeeper/volumes), on when configured


@dataclass(frozen=True)
class ManagerConfig:
    url: str  # as written: one URL, or several separated by commas (the managers of one group)
    ca: str
    cert: str
    key: str
    vcpus: int
    memory_mib: int
    interval: float = 2.0
    urls: tuple[str, ...] = ()  # each manager's URL, in the order tried (empty: `url` split at its commas)

    def __post_init__(self) -> None:
        if not self.urls:
            object.__setattr__(self, "urls", tuple(u.strip() for u in self.url.split(",") if u.strip()))


@dataclass(frozen=True)
class HypervisorConfig:
    uri: str
    kernel: str
    initrd: str
    accel: str = "qemu"
    console_dir: str | None = None
    migration_uri: str | None = None  # how other hosts' libvirtd reach this one (live migration)


_TOP = {"host", "api_socket", "underlay", "dataplane", "varp", "metrics", "security", "hypervisor", "manager",
        "volumes"}
_MANAGER = {"url", "ca", "cert", "key", "vcpus", "memory_mib", "interval"}
_HYPERVISOR = {"uri", "kernel", "initrd", "accel", "console_dir", "migration_uri"}
_SECURITY = {"keys_file", "varp_window"}
_UNDERLAY = {"interface", "address", "mtu"}
_DATAPLANE = {"transport", "offload", "datapath"}
_VARP = {"group", "flood", "hosts", "learn", "ttl", "stale_ttl", "probe_interval", "probe_max",
         "queue_max", "failed_ttl"}
_METRICS = {"listen"}
# VARP timers by kind: seconds are positive floats, counts are integers in 1..1000
_VARP_SECONDS = ("ttl", "stale_ttl", "probe_interval", "failed_ttl")
_VARP_COUNTS = ("probe_max", "queue_max")

Fail = Callable[[str, str], ConfigError]


def load_config(path: str | Path) -> GatekeeperConfig:
    return parse_config(read_toml(path, "copy configs/gatekeeper.example.toml"), str(path))


def parse_config(raw: dict[str, Any], where: str = "<config>") -> GatekeeperConfig:
    def fail(fieldname: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}: {fieldname}: {msg}")

    _no_unknown(raw, _TOP, "", fail)
    _required_strings(raw, ("host", "api_socket"), "", fail)
    # every table's shape is checked before any table's values: an error names the first bad table
    underlay = _table(raw, "underlay", _UNDERLAY, fail)
    dataplane = _table(raw, "dataplane", _DATAPLANE, fail)
    varp = _table(raw, "varp", _VARP, fail)
    metrics = _table(raw, "metrics", _METRICS, fail)
    security = _table(raw, "security", _SECURITY, fail)
    keys_file, window = _security(security, fail)
    interface, address, mtu = _underlay(underlay, fail)
    transport = _choice(dataplane.get("transport", "udp"), ("udp", "raw"), "'udp' or 'raw'",
                        "dataplane.transport", fail)
    offload = _flag(dataplane.get("offload", True), "dataplane.offload", fail)
    datapath = _choice(dataplane.get("datapath", "auto"), ("auto", "ebpf", "userspace"),
                       "'auto', 'ebpf' or 'userspace'", "dataplane.datapath", fail)
    group, flood, hosts = _varp_flooding(varp, fail)
    timers = _varp_timers(varp, fail)
    learn = _flag(varp.get("learn", True), "varp.learn", fail)
    listen = metrics.get("listen")
    if listen is not None and (not isinstance(listen, str) or ":" not in listen):
        raise fail("metrics.listen", f"{listen!r}, expected 'ADDRESS:PORT'")
    hypervisor = _hypervisor(_table(raw, "hypervisor", _HYPERVISOR, fail), fail) if "hypervisor" in raw else None
    manager = _manager(_table(raw, "manager", _MANAGER, fail), fail) if "manager" in raw else None
    volumes = parse_volumes(raw["volumes"], address, fail) if "volumes" in raw else None
    return GatekeeperConfig(
        host=raw["host"],
        api_socket=raw["api_socket"],
        underlay_interface=interface,
        underlay_address=address,
        underlay_mtu=mtu,
        transport=transport,
        offload=offload,
        datapath=datapath,
        varp_group=group,
        flood=flood,
        member_hosts=tuple(hosts),
        learn=learn,
        varp_timers=timers,
        metrics_listen=listen,
        keys_file=keys_file,
        varp_auth_window=window,
        hypervisor=hypervisor,
        manager=manager,
        volumes=volumes,
    )


def _no_unknown(value: dict[str, Any], allowed: set[str], prefix: str, fail: Fail) -> None:
    unknown = set(value) - allowed
    if unknown:
        raise fail(f"{prefix}{sorted(unknown)[0]}", f"unknown key (known: {', '.join(sorted(allowed))})")


def _table(raw: dict[str, Any], name: str, allowed: set[str], fail: Fail) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise fail(name, "must be a table")
    _no_unknown(value, allowed, f"{name}.", fail)
    return value


def _required_strings(table: dict[str, Any], keys: tuple[str, ...], prefix: str, fail: Fail) -> None:
    for key in keys:
        if not isinstance(table.get(key), str) or not table[key]:
            raise fail(f"{prefix}{key}", "required string")


def _flag(value: Any, fieldname: str, fail: Fail) -> bool:
    if not isinstance(value, bool):
        raise fail(fieldname, "must be true or false")
    return value


def _choice(value: Any, allowed: tuple[str, ...], expected: str, fieldname: str, fail: Fail) -> str:
    # a tuple, not a set: `in` then compares, so an unhashable value (a TOML table) is refused, not a TypeError
    if value not in allowed:
        raise fail(fieldname, f"{value!r}, expected {expected}")
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)  # TOML true is an int to Python


def _security(security: dict[str, Any], fail: Fail) -> tuple[str | None, float]:
    keys_file = security.get("keys_file")
    if keys_file is not None and not isinstance(keys_file, str):
        raise fail("security.keys_file", "must be a path")
    window = security.get("varp_window", 30)
    if not _is_number(window) or not 0 < window <= 3600:
        raise fail("security.varp_window", f"{window!r} must be seconds in (0, 3600]")
    return keys_file, float(window)


def _underlay(underlay: dict[str, Any], fail: Fail) -> tuple[str, str, int]:
    if not isinstance(underlay.get("interface"), str):
        raise fail("underlay.interface", "required string (the host's underlay NIC)")
    address = underlay.get("address")
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise fail("underlay.address", f"{address!r} is not an IPv4 address") from None
    mtu = underlay.get("mtu", 1500)
    if not isinstance(mtu, int) or not 1280 <= mtu <= 65535:
        raise fail("underlay.mtu", f"{mtu!r} is not an MTU between 1280 and 65535")
    return underlay["interface"], str(address), mtu


def _varp_flooding(varp: dict[str, Any], fail: Fail) -> tuple[str, str, list[str]]:
    group = varp.get("group", "224.10.0.1")
    try:
        if not ipaddress.IPv4Address(group).is_multicast:
            raise ValueError
    except ValueError:
        raise fail("varp.group", f"{group!r} is not an IPv4 multicast address") from None
    flood = _choice(varp.get("flood", "multicast"), ("multicast", "members"), "'multicast' or 'members'",
                    "varp.flood", fail)
    return group, flood, ipv4_list(varp.get("hosts", []), "varp.hosts", fail)


def _varp_timers(varp: dict[str, Any], fail: Fail) -> VarpTimers:
    timers: dict[str, Any] = {}
    for key in _VARP_SECONDS:
        if key in varp:
            v = varp[key]
            if not _is_number(v) or v <= 0:
                raise fail(f"varp.{key}", f"{v!r} must be a positive number of seconds")
            timers[key] = float(v)
    for key in _VARP_COUNTS:
        if key in varp:
            v = varp[key]
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1000:
                raise fail(f"varp.{key}", f"{v!r} must be an integer 1..1000")
            timers[key] = v
    return VarpTimers(**timers)


def _hypervisor(hv: dict[str, Any], fail: Fail) -> HypervisorConfig:
    _required_strings(hv, ("uri", "kernel", "initrd"), "hypervisor.", fail)
    accel = _choice(hv.get("accel", "qemu"), ("qemu", "kvm"), "'qemu' (TCG) or 'kvm'", "hypervisor.accel", fail)
    if "migration_uri" in hv:  # the manager accepts only this form (audit R20): say so at startup
        _migration_uri(hv["migration_uri"], fail)
    return HypervisorConfig(hv["uri"], hv["kernel"], hv["initrd"], accel, hv.get("console_dir"),
                            hv.get("migration_uri"))


def _migration_uri(uri: Any, fail: Fail) -> None:
    if not isinstance(uri, str):
        raise fail("hypervisor.migration_uri", f"{uri!r}, expected a libvirt URI such as "
                   "'qemu+tcp://10.99.0.11/system'")
    try:
        libvirturi.check(uri)
    except libvirturi.MigrationUriError as e:
        raise fail("hypervisor.migration_uri", str(e)) from None


def _manager(mg: dict[str, Any], fail: Fail) -> ManagerConfig:
    _required_strings(mg, ("url", "ca", "cert", "key"), "manager.", fail)
    for key, most in HOST_CAPACITY_MAX.items():  # what the contract lets a report say
        if type(mg.get(key)) is not int or not 0 < mg[key] <= most:
            raise fail(f"manager.{key}", f"required integer from 1 to {most} (the capacity this host offers)")
    urls = manager_urls(mg["url"], fail)
    return ManagerConfig(",".join(urls), mg["ca"], mg["cert"], mg["key"], mg["vcpus"], mg["memory_mib"],
                         float(mg.get("interval", 2.0)), urls)


MAX_MANAGERS = 16


def manager_urls(text: str, fail: Fail) -> tuple[str, ...]:
    """`[manager] url`: one manager's URL or several separated by commas, each https://HOST[:PORT]."""
    urls = [u.strip() for u in text.split(",")]
    if len(urls) > MAX_MANAGERS:
        raise fail("manager.url", f"{len(urls)} URLs; at most {MAX_MANAGERS} managers can be listed")
    for n, url in enumerate(urls, 1):
        which = f"URL {n} of {len(urls)}, " if len(urls) > 1 else ""
        try:
            u = urlparse(url)
            port = u.port
        except ValueError as e:
            raise fail("manager.url", f"{which}{url!r}: {e}; expected https://HOST[:PORT]") from None
        if u.scheme != "https" or not u.hostname or u.path not in ("", "/") or u.query or u.params:
            raise fail("manager.url", f"{which}{url!r} is not a manager's URL; expected https://HOST[:PORT], "
                       "several separated by commas")
        if port == 0:
            raise fail("manager.url", f"{which}{url!r}: port 0; give the manager's port (default 8443)")
    if len(set(urls)) != len(urls):
        raise fail("manager.url", f"{text!r} lists a manager twice; list each once")
    return tuple(urls)


def load_keys(path: str | Path) -> dict[int, VnetKeys]:
    """The keys file: per VNET its security level, send epoch and master secrets by epoch.

        [vnets.10]
        security = "conf"          # none | auth | conf
        send_epoch = 1
        secrets = { 1 = "64 hex digits", 2 = "..." }
    """
    raw = read_toml(path, "the keys file named in [security] keys_file")
    out: dict[int, VnetKeys] = {}
    vnets = raw.get("vnets", {})
    if not isinstance(vnets, dict) or set(raw) - {"vnets"}:
        raise ConfigError(f"{path}: expected only [vnets.<id>] tables")
    for name, entry in vnets.items():
        where = f"{path}: vnets.{name}"
        try:
            out[int(name)] = parse_vnet_keys(int(name), entry)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
    return out


def parse_vnet_keys(vnet: int, entry: Any) -> VnetKeys:
    """One VNET's keys, from the keys file or the API (`vnet.keys`)."""
    if not isinstance(entry, dict) or set(entry) - {"security", "send_epoch", "secrets"}:
        raise ValueError("expected security, send_epoch and secrets")
    level = entry.get("security", "none")
    if level not in ("none", "auth", "conf"):
        raise ValueError(f"security {level!r}, expected none, auth or conf")
    secrets = entry.get("secrets", {})
    if not isinstance(secrets, dict):
        raise ValueError("secrets must map epoch numbers to hex strings")
    parsed = {int(epoch): bytes.fromhex(str(secret)) for epoch, secret in secrets.items()}
    send = entry.get("send_epoch")
    keys = VnetKeys(None if level == "none" else level, parsed, None if send is None else int(send))
    keys.validate(vnet)
    return keys
