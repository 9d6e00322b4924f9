"""The gatekeeper's local API operations (served by `softudc.localapi`: JSON lines on a unix socket)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gatekeeper.vnet.devices import DeviceError
from gatekeeper.vnet.service import ServiceError, VnetService
from softudc import localapi


def operations(service: VnetService, status: Callable[[], dict[str, Any]]) -> dict[str, Callable[..., Any]]:
    return {
        "status": status,
        "vnet.create": service.create_vnet,
        "vnet.delete": service.delete_vnet,
        "vnet.list": service.list_vnets,
        "vnet.keys": service.set_keys,
        "port.attach": service.attach,
        "port.detach": service.detach,
        "varp.cache": service.varp_entries,
        "varp.flush": service.varp_flush,
        "varp.announce": service.announce,
        "counters": service.counters,
    }


async def serve(path: str, ops: dict[str, Callable[..., Any]]) -> None:
    from gatekeeper.hypervisor.driver import HypervisorError
    from gatekeeper.volumes.daemon import DaemonError
    from gatekeeper.volumes.pool import VolumeError
    from gatekeeper.volumes.qmp import QmpConnectionError, QmpError

    await localapi.serve(path, ops, (ServiceError, DeviceError, HypervisorError, VolumeError, DaemonError, QmpError,
                                     QmpConnectionError))
