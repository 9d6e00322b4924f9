"""Online moves of a running VM's remote disk to another storage host (issue 13 item 4), on the VM's
host: a libvirt block copy of the disk into the destination's NBD+TLS export while the guest reads
and writes, rate-limited or adaptive, then a pivot onto it.

The manager says what to move (contract 3: a `DesiredDisk.move`, whose destination already holds
an empty volume of the same size exported to this host); this side runs one `MoveJob` thread per
move (libvirt-python blocks) that

1. checks the domain's live disk: already on the destination's export -> `pivoted` (after a
   gatekeeper restart, or a VM started or migrated after the move: nothing to do);
2. adaptive: samples the disk's latency before the copy (blockstats: total times / operations);
3. starts `virDomainBlockCopy(disk, <disk type='network'> NBD+TLS, bandwidth, REUSE_EXT)` (the
   destination exists; libvirt's client certificate is qemu.conf's nbd_tls_x509_cert_dir) or
   follows a job already on the disk;
4. polls `blockJobInfo` (copied/total bytes: QEMU's mirror counts what the guest dirties meanwhile
   into both), and in adaptive mode steers the job's speed (`blockJobSetSpeed`) so the guest's
   latency stays within the allowed inflation over its baseline (`steer`: multiplicative decrease
   when over, increase when under, as fast as allowed);
5. pivots (`blockJobAbort(PIVOT)`) once the mirror is in sync; QEMU refuses before that, so a
   refused pivot is tried again at the next poll.

The reports' `disk_moves` say each move's state and figures; the manager places the volume on the
destination once this host says `pivoted` (softudc/manager/volume_moves.py).
"""

from __future__ import annotations

import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import libvirt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from softudc.model.hoststate import DesiredVm, DiskMove

log = logging.getLogger("gatekeeper.volumes.move")

MB = 1_000_000
MIN_SPEED = 1 * MB  # an adaptive move never stops: at least 1 MB/s
MAX_SPEED = 2_000 * MB  # an adaptive move's ceiling (and its start once the guest is idle)
ADAPTIVE_START = 16 * MB
POLL_S = 0.5
STEER_S = 1.0  # latency is judged over this much time (a shorter window sees too few guest I/Os)
BASELINE_S = 2.0
RATE_WINDOW_S = 3.0
RETRY_S = 10.0  # a failed move the manager still asks for is tried again after this


def steer(speed: int, baseline_ns: float | None, latency_ns: float | None, max_pct: float) -> int:
    """The next speed of an adaptive move: cut by 30 % when the guest's latency is over its
    allowance, raised by 25 % when under it (also when the guest did no I/O, or there is no
    baseline to judge by), within MIN_SPEED..MAX_SPEED."""
    over = (latency_ns is not None and baseline_ns is not None and baseline_ns > 0
            and inflation_pct(baseline_ns, latency_ns) > max_pct)
    nxt = int(speed * 0.7) if over else int(speed * 1.25) + MB
    return max(MIN_SPEED, min(MAX_SPEED, nxt))


def inflation_pct(baseline_ns: float, latency_ns: float) -> float:
    return (latency_ns / baseline_ns - 1.0) * 100.0


def latency_ns(before: dict[str, int], after: dict[str, int]) -> float | None:
    """The mean time of a read or write between two blockstats samples (None: no I/O between)."""
    ops = sum(after.get(k, 0) - before.get(k, 0) for k in ("rd_operations", "wr_operations"))
    spent = sum(after.get(k, 0) - before.get(k, 0) for k in ("rd_total_times", "wr_total_times"))
    return spent / ops if ops > 0 else None


def dest_xml(move: DiskMove, volume: str) -> str:
    """The block copy's destination: the storage host's export, decoded (raw), over TLS."""
    disk = ET.Element("disk", type="network", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw")
    src = ET.SubElement(disk, "source", protocol="nbd", name=volume, tls="yes")
    ET.SubElement(src, "host", name=move.address, port=str(move.port))
    return ET.tostring(disk, encoding="unicode")


def disk_source(domain_xml: str, target: str) -> tuple[str, str, int] | None:
    """(export name, address, port) of the domain's NBD disk `target` (None: no such NBD disk)."""
    for disk in ET.fromstring(domain_xml).findall("./devices/disk"):
        tgt, src = disk.find("target"), disk.find("source")
        if tgt is None or tgt.get("dev") != target or src is None or src.get("protocol") != "nbd":
            continue
        host = src.find("host")
        if host is not None and (port := host.get("port", "")).isdigit():
            return src.get("name", ""), host.get("name", ""), int(port)
    return None


def on_destination(domain_xml: str, target: str, volume: str, move: DiskMove) -> bool:
    return disk_source(domain_xml, target) == (volume, move.address, move.port)


class MoveJob(threading.Thread):
    """One disk's move (see the module's header); `report()` is safe from any thread."""

    def __init__(self, conn: Callable[[], Any], vm: str, target: str, volume: str, move: DiskMove,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(name=f"move-{volume}", daemon=True)
        self.conn, self.vm, self.target, self.volume, self.move = conn, vm, target, volume, move
        self.clock, self.sleep = clock, sleep
        self.state = "copying"
        self.cur = self.end = 0
        self.speed: int | None = move.limit_mbps * MB if move.limit_mbps else None
        self.inflation: float | None = None
        self.error: str | None = None
        self.samples: list[tuple[float, int]] = []  # (time, bytes copied) of the last seconds
        self.started = self.ready_at = self.ended = 0.0
        self.cancelled = threading.Event()

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.move.id, "vm": self.vm, "to": self.move.host, "state": self.state,
                               "cur_bytes": self.cur, "end_bytes": self.end}
        if (rate := self.rate()) is not None:
            out["rate_bps"] = round(rate)
        if self.speed is not None:
            out["speed_bps"] = self.speed
        if self.inflation is not None:
            out["latency_inflation_pct"] = round(self.inflation, 1)
        if self.error:
            out["error"] = self.error[:2000]
        return out

    def rate(self) -> float | None:
        """Bytes copied per second over the last RATE_WINDOW_S (the whole copy once it is over)."""
        s = list(self.samples)
        if len(s) < 2 or s[-1][0] <= s[0][0]:
            return None
        return (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0])

    def run(self) -> None:
        try:
            self._run()
        except libvirt.libvirtError as e:
            self.state, self.error = "failed", f"{self.vm} disk {self.target}: {e.get_error_message() or e}"
            log.warning("move of %s failed: %s", self.volume, self.error)
        finally:
            self.ended = self.clock()

    def _run(self) -> None:
        dom = self.conn().lookupByName(self.vm)
        if on_destination(dom.XMLDesc(0), self.target, self.volume, self.move):
            self.state = "pivoted"
            return
        baseline = self._baseline(dom) if self.move.adaptive else None
        if not dom.blockJobInfo(self.target, 0):
            if self.move.adaptive:
                self.speed = ADAPTIVE_START
            params = {libvirt.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH: self.speed} if self.speed else {}
            # TRANSIENT_JOB: libvirt 9.0 refuses a copy job on a persistent domain otherwise; the
            # pivot changes the live definition only (a start defines the domain again from the
            # manager's disks, which name the destination by then).
            dom.blockCopy(self.target, dest_xml(self.move, self.volume), params,
                          libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT | libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
            log.info("%s: copying disk %s of %s to %s at %s B/s", self.volume, self.target, self.vm, self.move.host,
                     self.speed or "full speed")
        self.started = self.clock()
        self._follow(dom, baseline)

    def _baseline(self, dom: Any) -> float | None:
        before = dom.blockStatsFlags(self.target, 0)
        self.sleep(BASELINE_S)
        return latency_ns(before, dom.blockStatsFlags(self.target, 0))

    def _follow(self, dom: Any, baseline: float | None) -> None:
        stats, steered = (dom.blockStatsFlags(self.target, 0) if baseline is not None else {}), self.clock()
        while not self.cancelled.is_set():
            info = dom.blockJobInfo(self.target, 0)
            if not info:  # the job went away: pivoted (by us before a restart) or aborted
                self.state = "pivoted" if on_destination(dom.XMLDesc(0), self.target, self.volume, self.move) \
                    else "failed"
                self.error = None if self.state == "pivoted" else "the block copy ended without a switch-over"
                return
            self._progress(int(info.get("cur", 0)), int(info.get("end", 0)))
            if self.end and self.cur >= self.end and self._pivot(dom):
                return
            if baseline is not None and self.clock() - steered >= STEER_S:
                now = dom.blockStatsFlags(self.target, 0)
                self._steer(dom, baseline, latency_ns(stats, now))
                stats, steered = now, self.clock()
            self.sleep(POLL_S)
        dom.blockJobAbort(self.target, 0)  # no longer wanted: the disk stays where it was
        self.state, self.error = "failed", "cancelled: the manager no longer asks for this move"

    def _progress(self, cur: int, end: int) -> None:
        now = self.clock()
        self.cur, self.end = cur, end
        self.samples = [s for s in self.samples if now - s[0] <= RATE_WINDOW_S] + [(now, cur)]

    def _pivot(self, dom: Any) -> bool:
        self.state = "ready"
        self.ready_at = self.ready_at or self.clock()
        try:
            dom.blockJobAbort(self.target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        except libvirt.libvirtError as e:  # not in sync yet (the guest wrote meanwhile): next poll
            log.debug("pivot of %s not yet: %s", self.volume, e.get_error_message())
            return False
        self.samples = [(self.started, 0), (self.ready_at, self.end)]  # the rate: the whole copy's
        self.state = "pivoted"
        log.info("%s: disk %s of %s now on %s", self.volume, self.target, self.vm, self.move.host)
        return True

    def _steer(self, dom: Any, baseline: float, latency: float | None) -> None:
        self.inflation = inflation_pct(baseline, latency) if latency is not None and baseline > 0 else None
        speed = steer(self.speed or ADAPTIVE_START, baseline, latency, self.move.max_latency_inflation_pct)
        if speed != self.speed:
            dom.blockJobSetSpeed(self.target, speed, libvirt.VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES)
            self.speed = speed


Factory = Callable[[str, str, str, DiskMove], MoveJob]


class DiskMover:
    """The disk moves of this host's running VMs, as the manager asks for them (one job per move
    id; a move no longer asked for is cancelled while it copies)."""

    def __init__(self, conn: Callable[[], Any], job: Factory | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.conn, self.clock = conn, clock
        self.job: Factory = job or (lambda vm, target, volume, move: MoveJob(self.conn, vm, target, volume, move))
        self.jobs: dict[str, MoveJob] = {}  # volume -> its latest move here
        self.forgotten_bytes = 0  # copied by jobs no longer listed (the bytes counter stays monotonic)

    def step(self, vms: Iterable[DesiredVm], running: set[str]) -> list[str]:
        """Start the moves asked for that have no job yet; cancel those no longer asked for."""
        wanted: dict[str, tuple[str, str, DiskMove]] = {}
        for vm in vms:
            for d in vm.disks:
                if d.move is not None and vm.name in running:
                    wanted[d.volume] = (vm.name, d.target, d.move)
        done = []
        for volume, job in list(self.jobs.items()):
            if volume not in wanted or wanted[volume][2].id != job.move.id:
                job.cancelled.set()
                if not job.is_alive():
                    self.forgotten_bytes += job.cur
                    del self.jobs[volume]
        for volume, (name, target, move) in sorted(wanted.items()):
            old = self.jobs.get(volume)
            if old is None or (old.state == "failed" and not old.is_alive() and self.clock() - old.ended >= RETRY_S):
                self.forgotten_bytes += old.cur if old is not None else 0
                self.jobs[volume] = self.job(name, target, volume, move)
                self.jobs[volume].start()
                done.append(f"volume.move {volume} to {move.host}")
        return done

    def report(self) -> dict[str, dict[str, Any]]:
        """The reports' `disk_moves`: volume -> its move's state and figures."""
        return {volume: job.report() for volume, job in sorted(self.jobs.items())}


class MovesCollector(Collector):
    """softudc_volume_moves{state} (this host's disk moves by state), softudc_volume_move_bytes_total
    (bytes copied by them, the guest's rewrites included), softudc_volume_move_rate_bytes{volume}
    (each copying move's rate over the last seconds) and softudc_volume_move_speed_bytes{volume}
    (the limit its job runs at: fixed, or as adaptive mode steers it)."""

    def __init__(self, host: str, mover: DiskMover | None) -> None:
        self.host, self.mover = host, mover

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        if self.mover is None:  # no hypervisor here: no VM disks to move
            return
        h, jobs = self.host, list(self.mover.jobs.items())
        moves = GaugeMetricFamily("softudc_volume_moves", "Disk moves of this host's VMs by state",
                                  labels=["host", "state"])
        for state in ("copying", "ready", "pivoted", "failed"):
            moves.add_metric([h, state], sum(1 for _, j in jobs if j.state == state))
        yield moves
        moved = CounterMetricFamily("softudc_volume_move_bytes", "Bytes copied by disk moves", labels=["host"])
        moved.add_metric([h], self.mover.forgotten_bytes + sum(j.cur for _, j in jobs))
        yield moved
        rate = GaugeMetricFamily("softudc_volume_move_rate_bytes", "A copying disk move's bytes per second",
                                 labels=["host", "volume"])
        speed = GaugeMetricFamily("softudc_volume_move_speed_bytes", "A copying disk move's speed limit "
                                  "(bytes per second)", labels=["host", "volume"])
        for volume, j in jobs:
            if j.state in ("copying", "ready"):
                rate.add_metric([h, volume], j.rate() or 0.0)
                if j.speed is not None:
                    speed.add_metric([h, volume], j.speed)
        yield rate
        yield speed
