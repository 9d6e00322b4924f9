"""The ring-buffer reader: FDB misses and unresolved underlay neighbours reported by vnet_encap.

The reader's `fileno()` is libbpf's epoll fd, so it joins the gatekeeper's event loop; `poll()`
drains whatever is ready and returns the decoded events (a miss is resolved by VARP, which then
writes the FDB entry through `Datapath.sync_fdb`).
"""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from gatekeeper.vnet.bpf import layouts
from gatekeeper.vnet.bpf.libbpf import RingCallback, check, lib


class EventReader:
    def __init__(self, map_fd: int) -> None:
        self._pending: list[layouts.Event] = []
        self.bad = 0  # records too short to decode (a mismatched object file)
        self._cb = RingCallback(self._on_record)  # keep a reference: libbpf calls it later
        self._rb = lib().ring_buffer__new(map_fd, self._cb, None, None)
        if not self._rb:
            check(-(ctypes.get_errno() or errno.EINVAL), "ring_buffer__new on ebs_events")

    def _on_record(self, _ctx: Any, data: Any, size: int) -> int:
        try:
            self._pending.append(layouts.Event.unpack(ctypes.string_at(data, size)))
        except layouts.LayoutError:
            self.bad += 1
        return 0

    def fileno(self) -> int:
        return int(lib().ring_buffer__epoll_fd(self._rb))

    def poll(self, timeout_ms: int = 0) -> list[layouts.Event]:
        rc = lib().ring_buffer__poll(self._rb, timeout_ms)
        if rc < 0 and rc != -errno.EINTR:
            check(rc, "ring_buffer__poll")
        out, self._pending = self._pending, []
        return out

    def close(self) -> None:
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None
