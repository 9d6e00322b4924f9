"""Which data path each VNET runs: the eBPF programs or the userspace forwarder (docs/ebpf.md).

`dataplane.datapath` in the gatekeeper config: `auto` (default) puts `security: none` VNETs over
UDP on eBPF when BPF works here and keeps every other VNET in userspace; `ebpf` forces it (and says
why when a VNET cannot have it); `userspace` turns the eBPF path off.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gatekeeper.vnet.bpf.layouts import MAX_MEMBERS
from gatekeeper.vnet.bpf.libbpf import BpfError, lib
from gatekeeper.vnet.bpf.loader import default_object

log = logging.getLogger(__name__)

SETTINGS = ("auto", "ebpf", "userspace")


class SelectionError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PathChoice:
    vnet: int
    path: str  # "ebpf" | "userspace"
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"vnet": self.vnet, "path": self.path, "reason": self.reason}


def bpf_problem(obj: Path | None = None) -> str | None:
    """Why the eBPF path cannot run on this host, or None when it can."""
    if os.geteuid() != 0:
        return "not root (loading tc programs needs CAP_BPF and CAP_NET_ADMIN)"
    path = obj or default_object()
    if not path.exists():
        return f"{path} missing (run scripts/build-bpf.sh, part of make bootstrap)"
    try:
        lib()
    except BpfError as e:
        return str(e)
    return None


def _blocker(transport: str, security: str, members: int) -> str | None:
    if security != "none":
        return f"security {security} needs ESP, which runs in userspace"
    if transport != "udp":
        return f"transport {transport}: the eBPF programs carry UDP/1798 only"
    if members > MAX_MEMBERS:
        return f"{members} member hosts: the eBPF flood reaches at most {MAX_MEMBERS}"
    return None


def choose(vnet: int, setting: str, transport: str, security: str, members: int, problem: str | None) -> PathChoice:
    """The path for one VNET; `problem` is `bpf_problem()` (computed once per gatekeeper)."""
    if setting not in SETTINGS:
        raise SelectionError(f"dataplane.datapath: {setting!r}, expected one of {', '.join(SETTINGS)}")
    if setting == "userspace":
        return _logged(PathChoice(vnet, "userspace", "dataplane.datapath = userspace"))
    blocker = _blocker(transport, security, members)
    if setting == "ebpf" and (blocker or problem):
        raise SelectionError(f"vnet {vnet}: dataplane.datapath = ebpf, but {blocker or problem}; "
                             "set dataplane.datapath = auto to fall back to userspace")
    if blocker or problem:
        return _logged(PathChoice(vnet, "userspace", str(blocker or problem)))
    reason = "dataplane.datapath = ebpf" if setting == "ebpf" else "auto: security none over UDP, BPF available"
    return _logged(PathChoice(vnet, "ebpf", reason))


def _logged(choice: PathChoice) -> PathChoice:
    log.info("vnet %d: %s data path (%s)", choice.vnet, choice.path, choice.reason)
    return choice


def metrics_lines(choices: list[PathChoice]) -> list[str]:
    """Prometheus exposition lines: softudc_vnet_datapath{vnet,path} 1 per VNET."""
    out = ["# HELP softudc_vnet_datapath The data path a VNET runs on (1 for the path in use).",
           "# TYPE softudc_vnet_datapath gauge"]
    out += [f'softudc_vnet_datapath{{vnet="{c.vnet}",path="{c.path}"}} 1' for c in choices]
    return out
