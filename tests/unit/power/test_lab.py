"""The lab driver on a saved lab with fake processes: off cuts every process of the host's
namespace and forgets the PIDs, on starts libvirtd and the gatekeeper and records them, status
follows the PIDs, identify is recorded."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from softudc.lab.state import Host, Lab, LabError, LabSpec, load_lab
from softudc.power.driver import PowerError
from softudc.power.lab import HostSwitch, LabPower, read_identify


class FakeHost(HostSwitch):
    def __init__(self, running: set[int]) -> None:
        super().__init__()
        self.running = running
        self.alive = lambda pid: pid in self.running
        self.pids_in = lambda netns: sorted(self.running)
        self.started: list[str] = []
        self.fail: str | None = None
        self.start_libvirtd = self._libvirtd
        self.start_gatekeeper = self._gatekeeper

    def _libvirtd(self, lab: Lab, host: Host) -> int:
        self.started.append("libvirtd")
        self.running.add(500)
        return 500

    def _gatekeeper(self, lab: Lab, host: Host) -> None:
        if self.fail:
            raise LabError(self.fail)
        self.started.append("gatekeeper")
        self.running.add(600)
        host.pid = 600

    def cut(self, pids: list[int], grace: float = 0) -> list[int]:
        self.running -= set(pids)
        return []


def make_lab(tmp_path: Path, vms: bool = True) -> Lab:
    lab = Lab(LabSpec("t1", hosts=2, vms=vms), str(tmp_path))
    lab.hosts = [Host(f"h{i}", f"sudc-t1-h{i}", 0, f"10.100.0.{10 + i}", f"10.99.0.{10 + i}", "a.sock", "c.toml",
                      "g.log", pid=100 + i, libvirtd_pid=200 + i) for i in (1, 2)]
    lab.save()
    return lab


def test_off_cuts_the_hosts_processes_and_on_starts_libvirtd_then_the_gatekeeper(tmp_path: Path) -> None:
    make_lab(tmp_path)
    fake = FakeHost({101, 201, 301})  # 301: a guest's QEMU
    power = LabPower("t1", "h1", str(tmp_path), switch=fake)
    assert power.status() == "on"
    power.off()
    assert fake.running == set() and power.status() == "off"
    h1, h2 = load_lab("t1", str(tmp_path)).hosts
    assert (h1.pid, h1.libvirtd_pid) == (None, None) and (h2.pid, h2.libvirtd_pid) == (102, 202)
    power.on()
    assert fake.started == ["libvirtd", "gatekeeper"] and power.status() == "on"
    h1 = load_lab("t1", str(tmp_path)).host("h1")
    assert (h1.pid, h1.libvirtd_pid) == (600, 500)
    power.on()  # already on: nothing started twice
    assert fake.started == ["libvirtd", "gatekeeper"]


def test_on_without_vms_starts_only_the_gatekeeper_and_a_failure_keeps_what_started(tmp_path: Path) -> None:
    make_lab(tmp_path, vms=False)
    fake = FakeHost(set())
    power = LabPower("t1", "h1", str(tmp_path), switch=fake)
    fake.fail = "gatekeeper on h1 exited with 1; see g.log"
    with pytest.raises(PowerError, match="lab t1/h1: power on failed: gatekeeper on h1 exited with 1"):
        power.on()
    fake.fail = None
    power.on()
    assert fake.started == ["gatekeeper"]


def test_cycle_is_off_then_on(tmp_path: Path) -> None:
    make_lab(tmp_path)
    fake = FakeHost({101, 201})
    LabPower("t1", "h1", str(tmp_path), switch=fake).cycle()
    assert fake.running == {500, 600}


def test_an_unknown_lab_or_host_is_a_power_error_naming_it(tmp_path: Path) -> None:
    make_lab(tmp_path)
    with pytest.raises(PowerError, match="lab t1/h9: lab t1: no host 'h9'"):
        LabPower("t1", "h9", str(tmp_path), switch=FakeHost(set())).status()
    with pytest.raises(PowerError, match="no lab 'zz'"):
        LabPower("zz", "h1", str(tmp_path), switch=FakeHost(set())).off()


def test_identify_is_recorded_until_when(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    power = LabPower("t1", "h2", str(tmp_path), switch=FakeHost(set()))
    before = time.time()
    power.identify(30)
    assert before + 30 <= power.identify_until() <= time.time() + 30
    assert read_identify(lab.dir / "h1") == 0.0
    with pytest.raises(PowerError, match="0 \\(off\\) to 255"):
        power.identify(-1)


def test_the_real_cut_terms_then_kills_by_pid() -> None:
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 30"])  # ignores SIGTERM: needs the SIGKILL
    time.sleep(0.2)
    t = time.monotonic()
    assert HostSwitch().cut([proc.pid], grace=0.3) == []
    assert proc.wait(timeout=5) == -9 and time.monotonic() - t < 5
    assert not os.path.exists(f"/proc/{proc.pid}/status") or proc.returncode is not None
