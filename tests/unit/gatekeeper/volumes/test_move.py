"""The disk move driver without libvirt: a fake domain that copies a few bytes per poll, refuses
the first pivot (not in sync yet), and reports blockstats; the clock and sleep are injected."""

from __future__ import annotations

from typing import Any

import libvirt
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.volumes.move import (
    MAX_SPEED,
    MB,
    MIN_SPEED,
    DiskMover,
    MoveJob,
    dest_xml,
    disk_source,
    latency_ns,
    on_destination,
    steer,
)
from softudc.model.hoststate import DesiredDisk, DesiredVm, DiskMove

MOVE = DiskMove(id="m1", host="h3", address="10.1.0.3", port=10809, limit_mbps=8)
VOL = "shop--db-0--data"


def domain_xml(name: str, address: str, port: int) -> str:
    return (f"<domain><devices><disk type='network'><source protocol='nbd' name='{name}' tls='yes'>"
            f"<host name='{address}' port='{port}'/></source><target dev='vdb' bus='virtio'/></disk>"
            "</devices></domain>")


class FakeDom:
    def __init__(self, step: int = 4 * MB, end: int = 16 * MB, refuse_pivots: int = 1, latency: int = 100) -> None:
        self.source = (VOL, "10.1.0.2", 10810)
        self.job: dict[str, int] | None = None
        self.step, self.end, self.refuse = step, end, refuse_pivots
        self.calls: list[tuple[str, Any]] = []
        self.ops = self.times = 0
        self.latency = latency

    def XMLDesc(self, _flags: int) -> str:
        return domain_xml(*self.source)

    def blockJobInfo(self, _disk: str, _flags: int) -> dict[str, int]:
        if self.job is None:
            return {}
        self.job["cur"] = min(self.job["cur"] + self.step, self.job["end"])
        return dict(self.job)

    def blockCopy(self, disk: str, xml: str, params: dict[str, int], flags: int) -> None:
        self.calls.append(("copy", (disk, params, flags)))
        self.job = {"cur": 0, "end": self.end, "type": 2}
        self.dest = xml

    def blockJobAbort(self, disk: str, flags: int) -> None:
        self.calls.append(("abort", flags))
        if flags & libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT:
            if self.refuse:
                self.refuse -= 1
                raise libvirt.libvirtError("not ready for pivot yet")
            self.source = (VOL, MOVE.address, MOVE.port)
        self.job = None

    def blockJobSetSpeed(self, disk: str, speed: int, flags: int) -> None:
        self.calls.append(("speed", speed))

    def blockStatsFlags(self, disk: str, flags: int) -> dict[str, int]:
        self.ops += 10
        self.times += 10 * self.latency
        return {"rd_operations": self.ops, "rd_total_times": self.times}


class Conn:
    def __init__(self, dom: FakeDom) -> None:
        self.dom = dom

    def lookupByName(self, name: str) -> FakeDom:
        return self.dom


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def run(dom: FakeDom, move: DiskMove = MOVE) -> MoveJob:
    clock = Clock()
    job = MoveJob(lambda: Conn(dom), "shop--db-0", "vdb", VOL, move, clock=clock, sleep=clock.sleep)
    job.run()  # in this thread
    return job


def test_a_limited_move_copies_at_its_limit_and_pivots_once_in_sync() -> None:
    dom = FakeDom()
    job = run(dom)
    assert dom.calls[0] == ("copy", ("vdb", {libvirt.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH: 8 * MB},
                                     libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
                                     | libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB))
    assert "protocol=\"nbd\"" in dom.dest and "tls=\"yes\"" in dom.dest and "port=\"10809\"" in dom.dest
    pivots = [c for c in dom.calls if c[0] == "abort"]
    assert len(pivots) == 2  # the first refused (not in sync), the second done
    report = job.report()
    assert (report["state"], report["cur_bytes"], report["end_bytes"], report["to"]) == ("pivoted", 16 * MB,
                                                                                          16 * MB, "h3")
    assert report["rate_bps"] > 0 and report["speed_bps"] == 8 * MB


def test_a_disk_already_on_the_destination_is_pivoted_without_a_copy() -> None:
    dom = FakeDom()
    dom.source = (VOL, MOVE.address, MOVE.port)
    assert run(dom).state == "pivoted" and dom.calls == []


def test_a_libvirt_refusal_fails_the_move_saying_why() -> None:
    dom = FakeDom()

    def refuse(*_a: Any) -> None:
        raise libvirt.libvirtError("Operation not supported: no TLS")
    dom.blockCopy = refuse  # type: ignore[method-assign,assignment]
    job = run(dom)
    assert job.state == "failed" and "no TLS" in (job.error or "")


def test_an_adaptive_move_slows_down_when_the_guest_s_latency_grows() -> None:
    dom = FakeDom(step=MB, end=64 * MB, refuse_pivots=0)
    move = DiskMove(id="m2", host="h3", address="10.1.0.3", port=10809, adaptive=True, max_latency_inflation_pct=20)
    slow = {"n": 0}
    real = dom.blockStatsFlags

    def stats(disk: str, flags: int) -> dict[str, int]:
        slow["n"] += 1
        if slow["n"] > 2:  # after the baseline: every I/O takes 3x as long
            dom.latency = 300
        return real(disk, flags)
    dom.blockStatsFlags = stats  # type: ignore[method-assign]
    job = run(dom, move)
    speeds = [s for op, s in dom.calls if op == "speed"]
    assert speeds and all(b < a for a, b in zip([16 * MB, *speeds], speeds, strict=False))  # only down
    assert job.report()["latency_inflation_pct"] == 200.0


@given(st.integers(MIN_SPEED, MAX_SPEED), st.floats(1, 1e9), st.floats(1, 1e9) | st.none(), st.integers(1, 500))
def test_steer_stays_in_bounds_and_goes_down_only_when_over(speed: int, base: float, lat: float | None,
                                                             pct: int) -> None:
    nxt = steer(speed, base, lat, pct)
    assert MIN_SPEED <= nxt <= MAX_SPEED
    over = lat is not None and (lat / base - 1) * 100 > pct
    assert (nxt <= speed) if over else (nxt >= speed or nxt == MAX_SPEED)


def test_latency_is_time_per_operation_between_samples() -> None:
    a = {"rd_operations": 10, "wr_operations": 5, "rd_total_times": 1000, "wr_total_times": 500}
    b = {"rd_operations": 20, "wr_operations": 10, "rd_total_times": 3000, "wr_total_times": 1500}
    assert latency_ns(a, b) == 200.0 and latency_ns(a, a) is None


def test_the_destination_xml_reads_back_as_the_move_s_export() -> None:
    xml = dest_xml(MOVE, VOL).replace("<disk ", "<domain><devices><disk ").replace("</disk>", "<target dev='vdb'/>"
                                                                                   "</disk></devices></domain>")
    assert disk_source(xml, "vdb") == (VOL, "10.1.0.3", 10809) and on_destination(xml, "vdb", VOL, MOVE)
    assert disk_source(xml, "vdc") is None


class FakeJob:
    def __init__(self, vm: str, target: str, volume: str, move: DiskMove) -> None:
        self.vm, self.move, self.state, self.ended, self.cur = vm, move, "copying", 0.0, 0
        self.started = False
        import threading
        self.cancelled = threading.Event()

    def start(self) -> None:
        self.started = True

    def is_alive(self) -> bool:
        return False

    def report(self) -> dict[str, Any]:
        return {"id": self.move.id, "state": self.state}


def test_the_mover_starts_asked_moves_of_running_vms_and_forgets_dropped_ones() -> None:
    made: list[FakeJob] = []

    def factory(vm: str, target: str, volume: str, move: DiskMove) -> Any:
        made.append(FakeJob(vm, target, volume, move))
        return made[-1]
    mover = DiskMover(lambda: None, factory)
    disk = DesiredDisk(volume=VOL, target="vdb", host="h2", address="10.1.0.2", port=10810, move=MOVE)
    vm = DesiredVm(name="shop--db-0", vcpus=1, memory_mib=128, disks=[disk])
    assert mover.step([vm], set()) == []  # not running here: nothing
    assert mover.step([vm], {"shop--db-0"}) == [f"volume.move {VOL} to h3"]
    assert mover.step([vm], {"shop--db-0"}) == [] and len(made) == 1  # one job per move
    assert mover.report() == {VOL: {"id": "m1", "state": "copying"}}
    made[0].state = "failed"
    assert mover.step([vm], {"shop--db-0"}) == [f"volume.move {VOL} to h3"]  # retried after RETRY_S
    mover.step([DesiredVm(name="shop--db-0", vcpus=1, memory_mib=128)], {"shop--db-0"})
    assert made[1].cancelled.is_set() and mover.report() == {}


def test_the_moves_metrics_count_states_bytes_and_rates() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from gatekeeper.volumes.move import MovesCollector

    dom = FakeDom()
    job = run(dom)
    mover = DiskMover(lambda: None)
    mover.jobs[VOL] = job
    mover.forgotten_bytes = 1000
    registry = CollectorRegistry()
    registry.register(MovesCollector("h1", mover))
    text = generate_latest(registry).decode()
    assert 'softudc_volume_moves{host="h1",state="pivoted"} 1.0' in text
    assert 'softudc_volume_move_bytes_total{host="h1"} 1.6001e+07' in text
    job.state = "copying"
    assert f'softudc_volume_move_speed_bytes{{host="h1",volume="{VOL}"}} 8e+06' in generate_latest(registry).decode()


def test_after_a_gatekeeper_restart_a_copy_under_way_is_followed_not_started_again() -> None:
    dom = FakeDom()
    dom.job = {"cur": 8 * MB, "end": 16 * MB, "type": 2}  # libvirt kept the job while the gatekeeper was away
    job = run(dom)
    assert not [c for c in dom.calls if c[0] == "copy"] and job.state == "pivoted"
