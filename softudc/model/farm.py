"""The Farm descriptor (apiVersion softudc.io/v1alpha1, kind Farm), as admins write it:

    apiVersion: softudc.io/v1alpha1
    kind: Farm
    metadata: {name: shop, labels: {team: web}}
    spec:
      vnets:
        - {name: front, subnet: 10.0.0.0/24, security: none}      # security: none | auth | conf
      placementGroups:
        - {name: web-spread, policy: anti-affinity, maxPerHost: 1} # affinity | anti-affinity |
                                                                    # soft-affinity | soft-anti-affinity
      vms:
        - name: web
          replicas: 2                # instances web-0, web-1
          vcpus: 1
          memory: 256Mi              # Ki, Mi, Gi, Ti
          image: test-guest
          placementGroup: web-spread
          migration: {policy: live, maxDowntimeMs: 100}             # live | cold | none
          nics:
            - {vnet: front, address: pool}                          # or a static address, or a list of
                                                                    # them, one per replica
          volumes:                                                  # softudc/model/volume.py
            - {name: data, size: 10Gi, class: remote, from: empty, keep: true}
`validate()` reports every problem at once, each as `file:line:col: field.path: message`, and
returns a Farm only when there is none.

A descriptor that validates must also be one the hosts can run and the manager can plan cheaply
(audit R9, R24, R25): names never contain `--` (it joins farm and instance in VM names), VM names
fit the gatekeeper's limit, vCPUs and MTUs stay within what a host accepts, and the sizes of
subnets and of the lists are capped. `validate(..., strict=False)` leaves out exactly these
rules, for descriptors stored before them: such a farm is Degraded until applied again, but what
it runs keeps running.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from softudc.model.hoststate import SEPARATOR
from softudc.model.source import DescriptorError, Mark, Node, Problem, load
from softudc.model.volume import VolumeDef, check_image_source, parse_volumes

API_VERSION = "softudc.io/v1alpha1"
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
SIZE_RE = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti)$")
UNITS = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
SECURITY = ("none", "auth", "conf")
POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")
MIGRATION = ("live", "cold", "none")
HA = ("restart", "none")  # after its host is fenced: restarted elsewhere, or left (softudc/manager/harestart.py)
MAX_PRIORITY = 1000  # HA restart order: highest first
MAX_REPLICAS = 1000
# The gatekeeper's limits (gatekeeper/vms.py `start`, gatekeeper/vnet/port.py `mtu_for`): a
# descriptor beyond them would validate but stay pending forever.
MAX_VM_NAME = 50  # `<farm>--<vm>-<replica>`, the libvirt domain name
MAX_VCPUS = 64
# The largest VNET MTU whose encapsulated packets fit a 1500-byte underlay (DESIGN.md, "MTU"):
# UDP framing adds 48 bytes; ESP in UDP adds 78 (with padding to 4 bytes).
MAX_MTU = {"none": 1452, "auth": 1422, "conf": 1422}
# Planning cost grows with these; a farm that needs more should be split.
MAX_PREFIX = 16  # the largest subnet: a /16 (65,534 addresses)
MAX_VNETS = 16  # per farm: also the farm's share of the 4093 VNET ids
MAX_VMS = 64  # VM definitions per farm
MAX_INSTANCES = 1000  # replicas of all VMs of a farm together
MAX_NICS = 8  # per VM
MAX_GROUPS = 64


@dataclass(frozen=True)
class VnetDef:
    name: str
    subnet: ipaddress.IPv4Network
    security: str = "none"
    mtu: int | None = None


@dataclass(frozen=True)
class NicDef:
    vnet: str
    addresses: tuple[ipaddress.IPv4Address, ...] = ()  # empty: from the VNET's pool


@dataclass(frozen=True)
class GroupDef:
    name: str
    policy: str
    max_per_host: int | None = None


@dataclass(frozen=True)
class VmDef:
    name: str
    replicas: int
    vcpus: int
    memory_mib: int
    image: str
    nics: tuple[NicDef, ...]
    group: str | None = None
    migration: str = "live"
    max_downtime_ms: int | None = None
    ha: str = "restart"
    priority: int = 0
    volumes: tuple[VolumeDef, ...] = ()  # softudc/model/volume.py

    def instance_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.replicas)]


@dataclass(frozen=True)
class Farm:
    name: str
    vnets: tuple[VnetDef, ...]
    vms: tuple[VmDef, ...]
    groups: tuple[GroupDef, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)


class _Checker:
    def __init__(self, strict: bool = True) -> None:
        self.problems: list[Problem] = []
        self.strict = strict  # False: the limits added after descriptors were stored are not checked

    def fail(self, mark: Mark, path: str, message: str) -> None:
        self.problems.append(Problem(mark, path, message))

    def mapping(self, node: Node, path: str, allowed: set[str], required: set[str]) -> dict[str, Node] | None:
        if not isinstance(node.value, dict):
            self.fail(node.mark, path, f"expected a mapping, got {_kind(node.value)}")
            return None
        for key, mark in node.key_marks.items():
            if key not in allowed:
                self.fail(mark, _join(path, key), f"unknown field (known: {', '.join(sorted(allowed))})")
        for key in sorted(required - set(node.value)):
            self.fail(node.mark, _join(path, key), "required field is missing")
        return {k: v for k, v in node.value.items() if k in allowed}

    def seq(self, node: Node, path: str) -> list[Node]:
        if not isinstance(node.value, list):
            self.fail(node.mark, path, f"expected a list, got {_kind(node.value)}")
            return []
        return list(node.value)

    def name(self, node: Node, path: str) -> str | None:
        if not isinstance(node.value, str) or not NAME_RE.match(node.value):
            self.fail(node.mark, path, f"{node.value!r} is not a name (lowercase letters, digits, '-'; at most 40)")
            return None
        if SEPARATOR in node.value and self.strict:
            self.fail(node.mark, path, f"{node.value!r} contains '{SEPARATOR}', which joins farm and instance in "
                                       "VM names; use a single '-'")
            return None
        return node.value

    def at_most(self, node: Node, path: str, limit: int, what: str) -> bool:
        """A list no longer than `limit` (checked before its items are looked at)."""
        if isinstance(node.value, list) and len(node.value) > limit and self.strict:
            self.fail(node.mark, path, f"{len(node.value)} {what}, at most {limit} per farm (split the farm)")
            return False
        return True

    def integer(self, node: Node, path: str, lo: int, hi: int) -> int | None:
        v = node.value
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(node.mark, path, f"{v!r} must be an integer from {lo} to {hi}")
            return None
        return v

    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> str | None:
        if node.value not in choices:
            self.fail(node.mark, path, f"{node.value!r}, expected one of: {', '.join(choices)}")
            return None
        return str(node.value)

    def unique(self, items: list[tuple[str | None, Mark, str]], what: str) -> None:
        seen: dict[str, Mark] = {}
        for name, mark, path in items:
            if name is None:
                continue
            if name in seen:
                self.fail(mark, path, f"duplicate {what} name {name!r} (first at line {seen[name].line})")
            else:
                seen[name] = mark


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(v), type(v).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _each(c: _Checker, node: Node | None, path: str, fn: Callable[[Node, str], Any]) -> list[Any]:
    if node is None:
        return []
    return [fn(item, f"{path}[{i}]") for i, item in enumerate(c.seq(node, path))]


def parse_size_mib(text: Any) -> int | None:
    m = SIZE_RE.match(str(text)) if isinstance(text, str) else None
    if not m:
        return None
    mib = int(m.group(1)) * UNITS[m.group(2)]
    return int(mib) if mib == int(mib) else None


def validate(text: str, file: str = "<farm>", strict: bool = True) -> Farm:
    root, problems = load(text, file)
    c = _Checker(strict)
    c.problems.extend(problems)
    top = _top(c, root)
    if top is None:
        raise DescriptorError(c.problems)
    name, labels = _metadata(c, top["metadata"]) if "metadata" in top else (None, {})
    spec = _spec(c, top["spec"]) if "spec" in top else None
    if spec is None:
        raise DescriptorError(c.problems)

    vnets = [v for v in _each(c, spec.get("vnets"), "spec.vnets", lambda n, p: _vnet(c, n, p)) if v]
    c.unique([(v.name, m, p) for v, m, p in vnets], "VNET")
    groups = [g for g in _each(c, spec.get("placementGroups"), "spec.placementGroups", lambda n, p: _group(c, n, p))
              if g]
    c.unique([(g.name, m, p) for g, m, p in groups], "placement group")
    vnet_by_name = {v.name: v for v, _, _ in vnets}
    group_names = {g.name for g, _, _ in groups}
    vms = [v for v in _each(c, spec.get("vms"), "spec.vms", lambda n, p: _vm(c, n, p, vnet_by_name, group_names))
           if v]
    c.unique([(v.name, m, p) for v, m, p in vms], "VM")
    _check_addresses(c, [(v, m, p) for v, m, p in vms], vnet_by_name)
    if c.strict:
        _check_sizes(c, name, vms, spec["vms"].mark)
    if c.problems or name is None:
        raise DescriptorError(c.problems)
    return Farm(name, tuple(v for v, _, _ in vnets), tuple(v for v, _, _ in vms), tuple(g for g, _, _ in groups),
                labels)


def _top(c: _Checker, root: Node | None) -> dict[str, Node] | None:
    """The document's four top-level fields, or None when there is nothing further to check."""
    if root is None:
        return None
    top = c.mapping(root, "", {"apiVersion", "kind", "metadata", "spec"}, {"apiVersion", "kind", "metadata", "spec"})
    if top is None:
        return None
    if "status" in root.key_marks:  # the manager writes a farm's status; a descriptor never carries one
        c.problems[:] = [p for p in c.problems if p.path != "status"]
        if c.strict:
            c.fail(root.key_marks["status"], "status", "is written by the manager, not part of a descriptor; "
                                                       "remove it (`softudc get farm` output is not a descriptor)")
    if "apiVersion" in top and top["apiVersion"].value != API_VERSION:
        c.fail(top["apiVersion"].mark, "apiVersion", f"{top['apiVersion'].value!r}, expected {API_VERSION}")
    if "kind" in top and top["kind"].value != "Farm":
        c.fail(top["kind"].mark, "kind", f"{top['kind'].value!r}, expected Farm")
    return top


def _metadata(c: _Checker, node: Node) -> tuple[str | None, dict[str, str]]:
    meta = c.mapping(node, "metadata", {"name", "labels"}, {"name"})
    if not meta:
        return None, {}
    name = c.name(meta["name"], "metadata.name") if "name" in meta else None
    if "labels" not in meta:
        return name, {}
    lab = meta["labels"]
    if not isinstance(lab.value, dict) or not all(isinstance(v.value, str) for v in lab.value.values()):
        c.fail(lab.mark, "metadata.labels", "expected a mapping of strings")
        return name, {}
    return name, {k: v.value for k, v in lab.value.items()}


def _spec(c: _Checker, node: Node) -> dict[str, Node] | None:
    """The spec's fields, or None when it is no mapping or a list is too long to look into."""
    spec = c.mapping(node, "spec", {"vnets", "vms", "placementGroups"}, {"vnets", "vms"})
    if spec is None:
        return None
    limits = (("vnets", MAX_VNETS, "VNETs"), ("vms", MAX_VMS, "VMs"), ("placementGroups", MAX_GROUPS, "groups"))
    # a list, not a generator: every over-long list is reported, not only the first
    if not all([c.at_most(spec[k], f"spec.{k}", n, what) for k, n, what in limits if k in spec]):
        return None
    return spec


def _vnet(c: _Checker, node: Node, path: str) -> tuple[VnetDef, Mark, str] | None:
    m = c.mapping(node, path, {"name", "subnet", "security", "mtu"}, {"name", "subnet"})
    if m is None:
        return None
    name = c.name(m["name"], f"{path}.name") if "name" in m else None
    subnet = None
    if "subnet" in m:
        try:
            subnet = ipaddress.IPv4Network(str(m["subnet"].value))
            if subnet.prefixlen > 30:
                c.fail(m["subnet"].mark, f"{path}.subnet", f"{subnet} is too small for VMs (at most /30)")
                subnet = None
            elif subnet.prefixlen < MAX_PREFIX and c.strict:
                c.fail(m["subnet"].mark, f"{path}.subnet", f"{subnet} is too large: at most a /{MAX_PREFIX} "
                                                           f"({2 ** (32 - MAX_PREFIX) - 2} addresses) per VNET")
                subnet = None
        except ValueError as e:
            c.fail(m["subnet"].mark, f"{path}.subnet", f"{m['subnet'].value!r} is not an IPv4 subnet ({e})")
    security = c.choice(m["security"], f"{path}.security", SECURITY) if "security" in m else "none"
    top = MAX_MTU.get(security or "none", MAX_MTU["none"]) if c.strict else 9000
    mtu = c.integer(m["mtu"], f"{path}.mtu", 576, top) if "mtu" in m else None
    if name is None or subnet is None or security is None or ("mtu" in m and mtu is None):
        return None
    return VnetDef(name, subnet, security, mtu), node.mark, f"{path}.name"


def _group(c: _Checker, node: Node, path: str) -> tuple[GroupDef, Mark, str] | None:
    m = c.mapping(node, path, {"name", "policy", "maxPerHost"}, {"name", "policy"})
    if m is None:
        return None
    name = c.name(m["name"], f"{path}.name") if "name" in m else None
    policy = c.choice(m["policy"], f"{path}.policy", POLICIES) if "policy" in m else None
    max_per_host = None
    if "maxPerHost" in m:
        max_per_host = c.integer(m["maxPerHost"], f"{path}.maxPerHost", 1, MAX_REPLICAS)
        if policy in ("affinity", "soft-affinity") and max_per_host is not None:
            c.fail(m["maxPerHost"].mark, f"{path}.maxPerHost",
                   f"maxPerHost contradicts policy {policy} (affinity puts every member on one host)")
            max_per_host = None
    if name is None or policy is None:
        return None
    return GroupDef(name, policy, max_per_host), node.mark, f"{path}.name"


def _vm(c: _Checker, node: Node, path: str, vnets: dict[str, VnetDef], groups: set[str]
        ) -> tuple[VmDef, Mark, str] | None:
    m = c.mapping(node, path, {"name", "replicas", "vcpus", "memory", "image", "nics", "placementGroup",
                               "migration", "ha", "priority", "volumes"}, {"name", "memory", "image", "nics"})
    if m is None:
        return None
    name = c.name(m["name"], f"{path}.name") if "name" in m else None
    replicas = c.integer(m["replicas"], f"{path}.replicas", 0, MAX_REPLICAS) if "replicas" in m else 1
    vcpus = c.integer(m["vcpus"], f"{path}.vcpus", 1, MAX_VCPUS if c.strict else 256) if "vcpus" in m else 1
    memory = _memory(c, m["memory"], f"{path}.memory") if "memory" in m else None
    image = _image(c, m["image"], f"{path}.image") if "image" in m else None
    group = m["placementGroup"].value if "placementGroup" in m else None
    group_ok = "placementGroup" not in m or _known_group(c, m["placementGroup"], f"{path}.placementGroup", groups)
    migration, max_downtime, migration_ok = \
        _migration(c, m["migration"], f"{path}.migration") if "migration" in m else ("live", None, True)
    ha = c.choice(m["ha"], f"{path}.ha", HA) if "ha" in m else "restart"
    priority = c.integer(m["priority"], f"{path}.priority", -MAX_PRIORITY, MAX_PRIORITY) if "priority" in m else 0
    nics = _vm_nics(c, m, path, vnets, replicas or 0)
    volumes = parse_volumes(c, m["volumes"], f"{path}.volumes") if "volumes" in m else []
    image_ok = "image" not in m or check_image_source(c, m["image"], f"{path}.image", volumes)
    if nics is None or None in (name, replicas, vcpus, memory, image, migration, ha, priority, volumes) \
            or not group_ok or not migration_ok or not image_ok:
        return None
    assert name and replicas is not None and vcpus and memory and image and migration and ha and priority is not None
    assert volumes is not None
    return VmDef(name, replicas, vcpus, memory, image, tuple(nics), group, migration, max_downtime, ha,
                 priority, tuple(volumes)), node.mark, f"{path}.name"


def _memory(c: _Checker, node: Node, path: str) -> int | None:
    memory = parse_size_mib(node.value)
    if memory is None or not 32 <= memory <= 4 * 1024 * 1024:
        c.fail(node.mark, path, f"{node.value!r} is not a size from 32Mi to 4Ti (a number and Ki, Mi, Gi or Ti)")
        return None
    return memory


def _image(c: _Checker, node: Node, path: str) -> str | None:
    if not isinstance(node.value, str) or not node.value:
        c.fail(node.mark, path, "expected an image name")
        return None
    return node.value


def _known_group(c: _Checker, node: Node, path: str, groups: set[str]) -> bool:
    if node.value not in groups:
        c.fail(node.mark, path, f"no placement group {node.value!r} in spec.placementGroups")
        return False
    return True


def _migration(c: _Checker, node: Node, path: str) -> tuple[str | None, int | None, bool]:
    """(policy, maxDowntimeMs, whether maxDowntimeMs is valid); a bad policy is None."""
    mig = c.mapping(node, path, {"policy", "maxDowntimeMs"}, set())
    if not mig:
        return "live", None, True
    policy = c.choice(mig["policy"], f"{path}.policy", MIGRATION) if "policy" in mig else "live"
    if "maxDowntimeMs" not in mig:
        return policy, None, True
    max_downtime = c.integer(mig["maxDowntimeMs"], f"{path}.maxDowntimeMs", 1, 60_000)
    return policy, max_downtime, max_downtime is not None


def _vm_nics(c: _Checker, m: dict[str, Node], path: str, vnets: dict[str, VnetDef], replicas: int
             ) -> list[NicDef] | None:
    """The VM's NICs, or None when any is wrong (each reported) or there are too many to look at."""
    if "nics" in m and isinstance(m["nics"].value, list) and len(m["nics"].value) > MAX_NICS and c.strict:
        c.fail(m["nics"].mark, f"{path}.nics", f"{len(m['nics'].value)} NICs, at most {MAX_NICS} per VM")
        return None
    nics = []
    ok = True
    for i, nic_node in enumerate(c.seq(m["nics"], f"{path}.nics") if "nics" in m else []):
        nic = _nic(c, nic_node, f"{path}.nics[{i}]", vnets, replicas)
        ok = ok and nic is not None
        if nic:
            nics.append(nic)
    return nics if ok else None


def _nic(c: _Checker, node: Node, path: str, vnets: dict[str, VnetDef], replicas: int) -> NicDef | None:
    m = c.mapping(node, path, {"vnet", "address"}, {"vnet"})
    if m is None:
        return None
    vnet = m["vnet"].value if "vnet" in m else None
    if vnet not in vnets:
        c.fail(m["vnet"].mark, f"{path}.vnet", f"no VNET {vnet!r} in spec.vnets")
        return None
    subnet = vnets[vnet].subnet
    raw = m["address"].value if "address" in m else "pool"
    if raw == "pool":
        return NicDef(vnet)
    nodes = raw if isinstance(raw, list) else [m["address"]]
    addresses = []
    for j, a in enumerate(nodes):
        apath = f"{path}.address" + (f"[{j}]" if isinstance(raw, list) else "")
        try:
            addr = ipaddress.IPv4Address(str(a.value))
        except ValueError:
            c.fail(a.mark, apath, f"{a.value!r} is neither 'pool' nor an IPv4 address")
            return None
        if addr not in subnet or addr in (subnet.network_address, subnet.broadcast_address):
            c.fail(a.mark, apath, f"{addr} is not a host address of {vnet}'s subnet {subnet}")
            return None
        addresses.append(addr)
    if len(addresses) != replicas:
        c.fail(m["address"].mark, f"{path}.address",
               f"{len(addresses)} static address(es) for {replicas} replica(s); give one per replica or 'pool'")
        return None
    return NicDef(vnet, tuple(addresses))


def _check_addresses(c: _Checker, vms: list[tuple[VmDef, Mark, str]], vnets: dict[str, VnetDef]) -> None:
    """Static addresses are unique per VNET, and every pool has room for its instances."""
    used: dict[tuple[str, ipaddress.IPv4Address], str] = {}
    pool_demand: dict[str, int] = {}
    for vm, mark, path in vms:
        for nic in vm.nics:
            if not nic.addresses:
                pool_demand[nic.vnet] = pool_demand.get(nic.vnet, 0) + vm.replicas
            for addr in nic.addresses:
                if (nic.vnet, addr) in used:
                    c.fail(mark, path.rsplit(".", 1)[0] + ".nics",
                           f"address {addr} on {nic.vnet} is also given to {used[(nic.vnet, addr)]}")
                used[(nic.vnet, addr)] = vm.name
    for vnet, demand in pool_demand.items():
        # Hosts of the subnet, less the gateway (.1) convention and the static addresses.
        room = vnets[vnet].subnet.num_addresses - 3 - sum(1 for (v, _) in used if v == vnet)
        if demand > room:
            c.fail(Mark(vms[0][1].file, 1, 1), f"spec.vnets.{vnet}",
                   f"{demand} instances need pool addresses but {vnets[vnet].subnet} has room for {room}")


def _check_sizes(c: _Checker, farm: str | None, vms: list[tuple[VmDef, Mark, str]], mark: Mark) -> None:
    """The farm's instances together, and each VM name as a host will see it (`<farm>--<instance>`)."""
    total = sum(vm.replicas for vm, _, _ in vms)
    if total > MAX_INSTANCES:
        c.fail(mark, "spec.vms", f"{total} instances in all, at most {MAX_INSTANCES} per farm (split the farm)")
    for vm, vm_mark, path in vms:
        longest = f"{farm or ''}{SEPARATOR}{vm.name}-{max(vm.replicas - 1, 0)}"
        if farm is not None and len(longest) > MAX_VM_NAME:
            c.fail(vm_mark, path, f"VM names such as {longest!r} are {len(longest)} characters, over the hosts' "
                                  f"limit of {MAX_VM_NAME} (farm name + '{SEPARATOR}' + VM name + '-' + replica); "
                                  "shorten the farm or VM name")
