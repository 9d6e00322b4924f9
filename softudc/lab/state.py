"""A lab's records: what `softudc lab up` built (its spec, hosts, endpoints, vnetds, the manager's
files) as dataclasses, saved to and loaded from `<state dir>/labs/<name>/lab.json`.

No namespace is touched here: the modules that build a lab (`lab.py`, `libvirt.py`, `vnetd.py`,
`manager.py`, `endpoint.py`) all import these records, and `lab.py` imports those modules.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softudc.cli.errors import CliError

NAME_RE = re.compile(r"^[a-z0-9]{1,10}$")
PREFIX = "sudc-"


class LabError(CliError):
    """A lab could not be built, found or used; the message says what to do."""


CHOICES: dict[str, tuple[str, ...]] = {  # a LabSpec field's allowed values ("": unset)
    "transport": ("udp", "raw"), "flood": ("multicast", "members"), "vnetd_peering": ("mesh", "chain"),
    "power": ("lab", "ipmi"), "datapath": ("", "auto", "ebpf", "userspace"),
}


@dataclass
class LabSpec:
    name: str
    hosts: int = 3
    segments: int = 1
    underlay_mtu: int = 1500
    gatekeepers: bool = True
    transport: str = "udp"
    flood: str = "multicast"
    offloads: bool = True
    varp: dict[str, float | bool] = field(default_factory=dict)
    security: dict[str, float | str] = field(default_factory=dict)
    vnetd: bool = False
    vnetd_peering: str = "mesh"
    vms: bool = False
    manager: bool = False
    ha: bool = False  # with manager: 2 managers on a 3-member etcd cluster in the management namespace
    guest_dir: str | None = None  # default: build/guest of this checkout, or $SOFTUDC_GUEST_DIR
    power: str = "lab"  # each host's power driver: lab (its processes) or ipmi (an ipmi_sim BMC per host)
    datapath: str = ""  # every gatekeeper's dataplane.datapath; "": $SOFTUDC_LAB_DATAPATH, else the default

    def validate(self) -> None:
        if not NAME_RE.match(self.name):
            raise LabError(f"lab name {self.name!r}: use 1-10 lowercase letters or digits")
        if not 1 <= self.hosts <= 200:
            raise LabError(f"hosts: {self.hosts} is out of range 1..200")
        if not 1 <= self.segments <= min(self.hosts, 50):
            raise LabError(f"segments: {self.segments} must be between 1 and the host count")
        if not 1280 <= self.underlay_mtu <= 9000:
            raise LabError(f"underlay_mtu: {self.underlay_mtu} is out of range 1280..9000")
        for fld, allowed in CHOICES.items():
            if getattr(self, fld) not in allowed:
                expected = " or ".join(repr(a) for a in allowed if a)
                raise LabError(f"{fld}: {getattr(self, fld)!r}, expected {expected}")
        if self.ha and not self.manager:
            raise LabError("ha: several managers need the manager; add --manager (softudc lab up NAME --manager --ha)")


@dataclass
class Host:
    name: str
    netns: str
    segment: int
    underlay_ip: str
    mgmt_ip: str
    api_socket: str
    config_path: str
    log_path: str
    pid: int | None = None
    libvirtd_pid: int | None = None
    power: dict[str, Any] | None = None  # its power config (softudc/power/factory.py)
    bmc_pid: int | None = None  # its ipmi_sim (LabSpec.power == "ipmi"), in the management namespace


@dataclass
class Endpoint:
    name: str
    netns: str
    host: str
    vnet: int
    ip: str
    mac: str
    host_ifname: str


@dataclass
class VnetdInfo:
    segment: int
    netns: str
    address: str
    api_socket: str
    config_path: str
    log_path: str
    pid: int | None = None


@dataclass
class ManagerProc:
    """One manager of an HA lab: its id, the address it listens on (management network), its PID."""

    id: str
    address: str
    pid: int | None = None


@dataclass
class EtcdMemberInfo:
    """One member of an HA lab's etcd cluster (management namespace)."""

    name: str
    host: str
    client_port: int
    peer_port: int
    pid: int | None = None


@dataclass
class Lab:
    spec: LabSpec
    state_dir: str
    hosts: list[Host] = field(default_factory=list)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    vnetds: list[VnetdInfo] = field(default_factory=list)
    relay_key: str = field(default_factory=lambda: secrets.token_hex(32))
    accel: str = "qemu"
    manager_pid: int | None = None
    manager_files: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> ca, cert, key
    managers: list[ManagerProc] = field(default_factory=list)  # HA: every manager (manager_pid: the first's)
    etcd: list[EtcdMemberInfo] = field(default_factory=list)  # HA: the store's members
    etcd_token: str = ""

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.spec.name}-"

    @property
    def dir(self) -> Path:
        return Path(self.state_dir) / "labs" / self.spec.name

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"lab {self.spec.name}: no host {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")

    def segment_ns(self, k: int) -> str:
        return f"{self.prefix}s{k}"

    @property
    def mgmt_ns(self) -> str:
        return f"{self.prefix}mgmt"

    @property
    def router_ns(self) -> str:
        return f"{self.prefix}rt"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "lab.json.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        tmp.replace(self.dir / "lab.json")


def default_state_dir() -> str:
    env = os.environ.get("SOFTUDC_STATE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "softudc")


def load_lab(name: str, state_dir: str | None = None) -> Lab:
    state_dir = state_dir or default_state_dir()
    path = Path(state_dir) / "labs" / name / "lab.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab {name!r} under {state_dir} (start one with `softudc lab up {name}`)") from None
    lab = Lab(LabSpec(**raw["spec"]), raw["state_dir"])
    lab.hosts = [Host(**h) for h in raw["hosts"]]
    lab.endpoints = {k: Endpoint(**e) for k, e in raw["endpoints"].items()}
    lab.vnetds = [VnetdInfo(**v) for v in raw.get("vnetds", [])]
    lab.relay_key = raw.get("relay_key", lab.relay_key)
    lab.accel = raw.get("accel", "qemu")
    lab.manager_pid = raw.get("manager_pid")
    lab.manager_files = raw.get("manager_files", {})
    lab.managers = [ManagerProc(**m) for m in raw.get("managers", [])]
    lab.etcd = [EtcdMemberInfo(**m) for m in raw.get("etcd", [])]
    lab.etcd_token = raw.get("etcd_token", "")
    return lab


def guest_dir(spec: LabSpec) -> Path:
    """The test guest's kernel and initrd (`make guest` builds them)."""
    d = Path(spec.guest_dir or os.environ.get("SOFTUDC_GUEST_DIR")
             or Path(__file__).resolve().parents[2] / "build" / "guest")
    if not (d / "vmlinuz").exists() or not (d / "initrd.img").exists():
        raise LabError(f"no test guest in {d}; build it with `make guest`")
    return d
