"""Load, pin, attach and drive the VNET eBPF programs of one host (docs/ebpf.md).

Maps are pinned under a per-host bpffs directory (lab hosts are namespaces of one machine, so the
directory must differ per host); a restarted gatekeeper loads the object again and libbpf re-adopts
the pinned maps, so the FDB survives and programs are replaced in place (BPF_TC_F_REPLACE).
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from gatekeeper.vnet.bpf import layouts
from gatekeeper.vnet.bpf.libbpf import (
    BPF_ANY,
    BPF_TC_EGRESS,
    BPF_TC_F_REPLACE,
    BPF_TC_INGRESS,
    BpfError,
    check,
    lib,
    tc_hook,
    tc_opts,
)

MAPS = ("ebs_cfg", "ebs_uplink", "ebs_local", "ebs_members", "ebs_fdb", "ebs_stats", "ebs_events", "ebs_miss_rl",
        "ebs_vstats")
OBJECT_ENV = "SOFTUDC_BPF_OBJ"


def default_object() -> Path:
    """build/bpf/vnet_dp.o of this checkout (scripts/build-bpf.sh), or $SOFTUDC_BPF_OBJ."""
    env = os.environ.get(OBJECT_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[3] / "build" / "bpf" / "vnet_dp.o"


def is_bpffs(path: Path) -> bool:
    real = str(path.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[4] == real and right.split()[0] == "bpf":
            return True
    return False


def ensure_bpffs(path: Path) -> None:
    """Mount a bpffs on `path` unless one is there (`ip netns exec` hides /sys/fs/bpf)."""
    path.mkdir(parents=True, exist_ok=True)
    if not is_bpffs(path):
        subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], check=True, capture_output=True)


class Datapath:
    """The loaded object: program fds, map fds, typed map access, tc attach/detach."""

    def __init__(self, pin_dir: Path, obj_path: Path | None = None) -> None:
        self.pin_dir = pin_dir
        self.obj_path = obj_path or default_object()
        if not self.obj_path.exists():
            raise BpfError(errno.ENOENT, f"eBPF data path: {self.obj_path} missing; run scripts/build-bpf.sh")
        ensure_bpffs(pin_dir)
        so = lib()
        self._obj = so.bpf_object__open_file(str(self.obj_path).encode(), None)
        if not self._obj:
            check(-(ctypes.get_errno() or errno.EINVAL), f"open {self.obj_path}")
        for name in MAPS:
            m = so.bpf_object__find_map_by_name(self._obj, name.encode())
            check(so.bpf_map__set_pin_path(m, str(pin_dir / name).encode()), f"pin path of {name}")
        check(so.bpf_object__load(self._obj), f"load {self.obj_path} (verifier log on stderr)")
        self.fds = {n: so.bpf_map__fd(so.bpf_object__find_map_by_name(self._obj, n.encode())) for n in MAPS}
        self.progs = {
            n: so.bpf_program__fd(so.bpf_object__find_program_by_name(self._obj, n.encode()))
            for n in ("vnet_encap", "vnet_decap")
        }
        self.ncpu = check(so.libbpf_num_possible_cpus(), "possible CPUs")

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None

    # -- raw map access ------------------------------------------------------------------------
    def update(self, name: str, key: bytes, value: bytes) -> None:
        check(lib().bpf_map_update_elem(self.fds[name], key, value, BPF_ANY), f"update {name}")

    def lookup(self, name: str, key: bytes, size: int) -> bytes | None:
        buf = ctypes.create_string_buffer(size)
        if lib().bpf_map_lookup_elem(self.fds[name], key, buf) < 0:
            return None
        return buf.raw

    def delete(self, name: str, key: bytes) -> bool:
        return int(lib().bpf_map_delete_elem(self.fds[name], key)) == 0

    def keys(self, name: str, size: int) -> Iterator[bytes]:
        prev: bytes | None = None
        nxt = ctypes.create_string_buffer(size)
        while lib().bpf_map_get_next_key(self.fds[name], prev, nxt) == 0:
            prev = nxt.raw
            yield prev

    # -- typed access --------------------------------------------------------------------------
    def set_cfg(self, cfg: layouts.Cfg) -> None:
        self.update("ebs_cfg", layouts.u32(0), cfg.pack())

    def set_uplink(self, ifindex: int, vnet: int) -> None:
        self.update("ebs_uplink", layouts.u32(ifindex), layouts.u32(vnet))

    def set_local(self, vnet: int, local: layouts.Local, members: list[str]) -> None:
        self.update("ebs_members", layouts.u32(vnet), layouts.pack_members(members))
        self.update("ebs_local", layouts.u32(vnet), local.pack())

    def fdb(self) -> dict[layouts.FdbKey, str]:
        size = layouts.SIZES["fdb_key"]
        out = {}
        for raw in list(self.keys("ebs_fdb", size)):
            val = self.lookup("ebs_fdb", raw, layouts.SIZES["fdb_val"])
            if val is not None:
                out[layouts.FdbKey.unpack(raw)] = layouts.unpack_fdb_val(val)
        return out

    def sync_fdb(self, want: dict[layouts.FdbKey, str]) -> None:
        """Make ebs_fdb equal to `want` (the gatekeeper's VARP cache for eBPF VNETs)."""
        have = self.fdb()
        for k, ip in want.items():
            if have.get(k) != ip:
                self.update("ebs_fdb", k.pack(), layouts.pack_fdb_val(ip))
        for k in have.keys() - want.keys():
            self.delete("ebs_fdb", k.pack())

    def counters(self) -> dict[str, int]:
        out = {}
        for i, name in enumerate(layouts.COUNTERS):
            raw = self.lookup("ebs_stats", layouts.u32(i), 8 * self.ncpu) or b""
            out[name] = sum(int.from_bytes(raw[j:j + 8], "little") for j in range(0, len(raw), 8))
        return out

    def vnet_stats(self, vnet: int) -> tuple[int, int, int, int]:
        """(tx_frames, tx_bytes, rx_frames, rx_bytes) BPF carried for `vnet`, summed over CPUs."""
        size = layouts.VSTATS.size
        raw = self.lookup("ebs_vstats", layouts.u32(vnet), size * self.ncpu) or b""
        rows = [layouts.VSTATS.unpack_from(raw, off) for off in range(0, len(raw), size)]
        tx_f, tx_b, rx_f, rx_b = (sum(col) for col in zip(*rows, strict=True)) if rows else (0, 0, 0, 0)
        return tx_f, tx_b, rx_f, rx_b

    # -- tc --------------------------------------------------------------------------------------
    def attach(self, prog: str, ifindex: int, egress: bool = False) -> None:
        """Attach `prog` at tc ingress (or egress) of `ifindex` (clsact created if absent; replaced if
        present). vnet_encap on a TAP's egress sees what the bridge sends the userspace forwarder."""
        hook = tc_hook(ifindex, BPF_TC_EGRESS if egress else BPF_TC_INGRESS)
        rc = lib().bpf_tc_hook_create(ctypes.byref(hook))
        if rc < 0 and rc != -errno.EEXIST:
            check(rc, f"clsact on ifindex {ifindex}")
        opts = tc_opts(self.progs[prog], flags=BPF_TC_F_REPLACE)
        check(lib().bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)), f"attach {prog} to ifindex {ifindex}")


def detach(ifindex: int) -> None:
    """Remove the clsact qdisc (and with it our programs) from `ifindex`; absent is fine."""
    hook = tc_hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)
    rc = lib().bpf_tc_hook_destroy(ctypes.byref(hook))
    if rc < 0 and rc not in (-errno.ENOENT, -errno.EINVAL, -errno.ENODEV):
        check(rc, f"remove clsact from ifindex {ifindex}")


def remove_pins(pin_dir: Path) -> None:
    """Unlink the pinned maps and unmount the per-host bpffs if we mounted one there."""
    for name in MAPS:
        (pin_dir / name).unlink(missing_ok=True)
    if pin_dir.exists() and is_bpffs(pin_dir):
        subprocess.run(["umount", str(pin_dir)], check=False, capture_output=True)
