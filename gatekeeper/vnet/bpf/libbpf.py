"""ctypes bindings for the few libbpf.so.1 calls the eBPF data path uses (no new dependency)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

BPF_ANY = 0
BPF_TC_INGRESS = 1
BPF_TC_EGRESS = 2
BPF_TC_F_REPLACE = 1

RingCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class BpfError(OSError):
    pass


class TcHook(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int), ("attach_point", ctypes.c_int),
                ("parent", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class TcOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("prog_fd", ctypes.c_int), ("flags", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("handle", ctypes.c_uint32), ("priority", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32)]


_SIGS: dict[str, tuple[object, list[object]]] = {
    "bpf_object__open_file": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
    "bpf_object__load": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_object__close": (None, [ctypes.c_void_p]),
    "bpf_object__find_map_by_name": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_object__find_program_by_name": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_map__set_pin_path": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_map__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_program__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p]),
    "bpf_map_get_next_key": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_tc_hook_create": (ctypes.c_int, [ctypes.POINTER(TcHook)]),
    "bpf_tc_hook_destroy": (ctypes.c_int, [ctypes.POINTER(TcHook)]),
    "bpf_tc_attach": (ctypes.c_int, [ctypes.POINTER(TcHook), ctypes.POINTER(TcOpts)]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
    "ring_buffer__new": (ctypes.c_void_p, [ctypes.c_int, RingCallback, ctypes.c_void_p, ctypes.c_void_p]),
    "ring_buffer__poll": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "ring_buffer__epoll_fd": (ctypes.c_int, [ctypes.c_void_p]),
    "ring_buffer__free": (None, [ctypes.c_void_p]),
}


@cache
def lib() -> ctypes.CDLL:
    """libbpf.so.1 with typed signatures; BpfError says what to install when it is missing."""
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        so = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise BpfError(f"eBPF data path: cannot load {name} ({e}); install libbpf1 (make bootstrap)") from None
    for fn, (res, args) in _SIGS.items():
        f = getattr(so, fn)
        f.restype = res
        f.argtypes = args
    return so


def check(rc: int, what: str) -> int:
    """libbpf returns -errno (and sets errno); turn a failure into a BpfError naming the call."""
    if rc < 0:
        err = -rc if rc != -1 else (ctypes.get_errno() or 1)
        raise BpfError(err, f"eBPF data path: {what}: {os.strerror(err)}")
    return rc


def tc_hook(ifindex: int, point: int) -> TcHook:
    return TcHook(sz=ctypes.sizeof(TcHook), ifindex=ifindex, attach_point=point)


def tc_opts(prog_fd: int, handle: int = 1, priority: int = 1, flags: int = 0) -> TcOpts:
    return TcOpts(sz=ctypes.sizeof(TcOpts), prog_fd=prog_fd, flags=flags, handle=handle, priority=priority)
