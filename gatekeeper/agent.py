"""gatekeeper: the per-host agent. A thin asyncio shell: the local API, the VARP timer and the
metrics endpoint around the VNET service and its forwarding threads."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server

from gatekeeper import api
from gatekeeper.config import GatekeeperConfig, load_config
from gatekeeper.metrics import make_registry
from gatekeeper.vms import VmService
from gatekeeper.vnet.bpf import handover
from gatekeeper.vnet.devices import Devices
from gatekeeper.vnet.service import VnetService
from gatekeeper.volumes.service import VolumeService
from softudc.daemonmain import daemon_main

if TYPE_CHECKING:
    from gatekeeper.reconciler import Reconciler
    from gatekeeper.volumes.move import DiskMover

log = logging.getLogger("gatekeeper")
TICK = 0.25
BUSY_INTERVAL = 0.2  # seconds between manager syncs while a migration is being handed over


async def run(config_path: str) -> None:
    config = load_config(config_path)
    state_file = Path(config.api_socket).with_name("gatekeeper-state.json")
    service = VnetService(config, Devices(), time.monotonic, state_file)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, service.start)  # netlink calls block
    vms = VmService(config.hypervisor, service) if config.hypervisor else None
    if vms is not None:
        # After a restart: running VMs are left as they are and re-adopted, never restarted.
        adopted = await loop.run_in_executor(None, vms.hv.adopt)
        log.info("adopted %d running VM(s): %s", len(adopted), ", ".join(adopted) or "none")
    volumes = await loop.run_in_executor(None, _volumes, config)  # adopts running exports
    mover = _disk_mover(vms)  # online moves of this host's VMs' disks (issue 13 item 4)
    if config.metrics_listen:
        addr, port = config.metrics_listen.rsplit(":", 1)
        registry = make_registry(service)
        if volumes is not None:
            from gatekeeper.volumes.metrics import VolumesCollector
            registry.register(VolumesCollector(config.host, volumes))
            from gatekeeper.volumes.mirror_hold import ReplicaCollector
            registry.register(ReplicaCollector(config.host, volumes.mirrors))  # mirrored volumes opened here
        from gatekeeper.volumes.move import MovesCollector
        registry.register(MovesCollector(config.host, mover))  # nothing without a hypervisor
        start_http_server(int(port), addr=addr, registry=registry)
    stop, restart = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _restart_in_place, restart, stop)  # handover.py
    log.info("gatekeeper %s up: underlay %s, transport %s, flood %s", config.host,
             config.underlay_address, config.transport, config.flood)
    try:
        async with asyncio.TaskGroup() as tg:
            ops = api.operations(service, _status(config, service, time.time()))
            if vms is not None:
                ops.update(vms.operations())
            if volumes is not None:
                ops.update(volumes.operations())
            tasks = [tg.create_task(api.serve(config.api_socket, ops), name="api"),
                     tg.create_task(_ticker(service), name="varp-timer")]
            if config.manager is not None:
                tasks.append(tg.create_task(_manager_loop(config, service, vms, state_file, volumes, mover),
                                            name="manager-sync"))
            await stop.wait()
            for task in tasks:
                task.cancel()
    finally:
        kept = service.stop(keep_datapath=restart.is_set())
        log.info("gatekeeper %s stopped", config.host)
    if restart.is_set():
        handover.reexec(kept)


def _restart_in_place(restart: asyncio.Event, stop: asyncio.Event) -> None:
    restart.set()
    stop.set()


def _volumes(config: GatekeeperConfig) -> VolumeService | None:
    """The storage service, if configured: its export daemons from before a restart adopted."""
    if config.volumes is None:
        return None
    v = config.volumes
    volumes = VolumeService(Path(v.pool_dir), Path(v.run_dir), Path(v.tls_dir), v.listen, v.port, v.capacity_bytes,
                            v.thin)
    volumes.start()
    return volumes


def _disk_mover(vms: VmService | None) -> DiskMover | None:
    """Online moves of the VMs' disks (gatekeeper/volumes/move.py): a host with a hypervisor."""
    if vms is None:
        return None
    from gatekeeper.volumes.move import DiskMover
    return DiskMover(vms.hv.conn)


def _status(config: GatekeeperConfig, service: VnetService, started: float) -> Callable[[], dict[str, Any]]:
    """The local API's `status`: what this gatekeeper is and carries."""
    def status() -> dict[str, Any]:
        return {"host": config.host, "underlay": config.underlay_address, "transport": config.transport,
                "flood": config.flood, "group": config.varp_group, "uptime": round(time.time() - started, 1),
                "vnets": [v["vnet"] for v in service.list_vnets()], "dataplane": service.forwarder.health()}
    return status


async def _ticker(service: VnetService) -> None:
    while True:
        await asyncio.sleep(TICK)
        service.tick()


async def _manager_loop(config: GatekeeperConfig, service: VnetService, vms: VmService | None,
                        state_file: Path, volumes: VolumeService | None = None, mover: DiskMover | None = None) -> None:
    """Report to the manager and converge on what it wants, round after round."""
    assert config.manager is not None
    # Here, not at the top: httpx and the reconciler cost ~0.3 s of start-up that a gatekeeper
    # without a manager (most lab tests) need not pay.
    from gatekeeper.manager_link import ManagerLink
    from gatekeeper.reconciler import Reconciler

    mc, loop = config.manager, asyncio.get_running_loop()
    client = Reconciler(ManagerLink.mutual_tls(mc.url, mc.ca, mc.cert, mc.key), config.host, service, vms, mc.vcpus,
                        mc.memory_mib, state_file.with_name("gatekeeper-managed.json"),
                        config.hypervisor.migration_uri if config.hypervisor else None,
                        pool=volumes.pool_status if volumes is not None else None)
    client.disk_mover = mover
    if volumes is not None:  # the volumes the manager wants here (issue 13, contract 3)
        from gatekeeper.volumes.converge import VolumeConverger
        client.volumes = VolumeConverger(volumes, state_file.with_name("gatekeeper-volumes.json"))
    if vms is not None:  # what the VMs use, sampled at each report (issue 12)
        from gatekeeper.load import LoadMeter
        client.load = LoadMeter(vms.hv.stats, nics=vms.hv.nics).sample  # + usage (issue 15)
    # Threads of their own: the local API's calls share the default pool, and a few of them held by
    # libvirt (a domain starting) must not hold this host's reports back (it would be judged down).
    link_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="manager-link")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_heartbeats(client, mc.interval, link_pool), name="manager-heartbeat")
        while True:  # each round waits for a change of what to run, or the interval, on the manager
            wait = min(mc.interval, BUSY_INTERVAL) if client.busy() else mc.interval
            try:
                done = await loop.run_in_executor(link_pool, client.sync, wait)
                if done:
                    log.info("converged: %s", "; ".join(done))
            except Exception as e:
                log.warning("manager sync: %s", e)
                await asyncio.sleep(mc.interval)


async def _heartbeats(client: Reconciler, period: float, pool: ThreadPoolExecutor) -> None:
    """Reports sent while a sync round is busy converging, so the host is never judged down (and
    fenced) for starting VMs slowly; each round reports on its own otherwise."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(period / 2)
        try:
            await loop.run_in_executor(pool, client.heartbeat, period)
        except Exception as e:  # the manager unreachable: the sync loop says so too
            log.debug("heartbeat: %s", e)


def main(argv: list[str] | None = None) -> None:
    daemon_main("gatekeeper", "SoftUDC per-host agent", run, argv, config_help="gatekeeper TOML file")
