"""Host power on a real lab (2 hosts, a libvirtd each, `--power ipmi`): our ipmi driver runs ipmitool
against each host's ipmi_sim on the management network; its chassis commands cut and restart the
host's processes (gatekeeper, libvirtd, a real QEMU guest). The lab driver does the same directly.
One lab for the module."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from softudc.cli.main import main as cli
from softudc.lab import Lab, LabSpec, lab_down, lab_up, load_lab, shell
from softudc.lab.manager import call
from softudc.lab.state import Host
from softudc.power.driver import PowerDriver, PowerError
from softudc.power.factory import driver_for
from softudc.power.fence import fence
from softudc.power.ipmi import IpmiPower
from softudc.power.lab import LabPower
from tests.e2e.conftest import _print_logs, _why_not_root, create_vnet, gk, wait_until

pytestmark = [pytest.mark.power, pytest.mark.vm]
MEASURED: list[str] = []


def _lab(request: pytest.FixtureRequest, vms: bool = False, manager: bool = False) -> Iterator[Lab]:
    reason = _why_not_root()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    if shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None:
        pytest.fail("ipmi_sim or ipmitool is missing: run `make bootstrap` (packages openipmi, ipmitool)")
    state = tempfile.mkdtemp(prefix="sudc")  # short: unix socket paths stay under 108 bytes
    failed_before = request.session.testsfailed
    made = lab_up(LabSpec(name="pw" + secrets.token_hex(3), hosts=2, power="ipmi", vms=vms, manager=manager),
                  state)
    try:
        yield made
    finally:
        if request.session.testsfailed > failed_before:
            _print_logs(made)
        print("\nmeasured: " + ("; ".join(MEASURED) or "nothing"))
        lab_down(made.spec.name, state)
        shutil.rmtree(state, ignore_errors=True)
        assert not [ns for ns in shell.netns_list() if ns.startswith(made.prefix)], "lab down left namespaces"
        # A BMC's power-on worker starts a gatekeeper: none may outlive the lab (once one did, in a
        # namespace already deleted).
        assert not processes_naming(state), f"lab down left processes behind: {processes_naming(state)}"


def processes_naming(text: str) -> list[int]:
    """The PIDs whose command line holds `text` (a lab's state directory)."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                out.append(int(cmdline.parent.name))
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """2 hosts, a libvirtd each (real guests), a BMC each; no manager: the drivers are called here."""
    yield from _lab(request, vms=True)


@pytest.fixture(scope="module")
def managed(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """2 hosts with gatekeepers joined to a manager, a BMC each: the manager powers them."""
    yield from _lab(request, manager=True)


def host(lab: Lab, name: str) -> Host:
    return load_lab(lab.spec.name, lab.state_dir).host(name)  # the PIDs as the drivers recorded them


def ipmi(lab: Lab, name: str) -> PowerDriver:
    config = host(lab, name).power
    assert config is not None and config["driver"] == "ipmi", config
    return driver_for(config)


def qemu_pids(netns: str) -> list[int]:
    out = []
    for pid in shell.netns_pids(netns):
        try:
            if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def wait_power(driver: PowerDriver, state: str, timeout: float = 30.0) -> float:
    t = time.monotonic()
    assert wait_until(lambda: driver.status() == state, timeout=timeout, interval=0.2), \
        f"{driver.name} still {driver.status()} after {timeout} s"
    return time.monotonic() - t


def test_ipmi_power_off_cuts_the_host_with_its_guest_and_on_brings_it_back(lab: Lab) -> None:
    create_vnet(lab, 10, ["h2"])
    gk(lab, "h2").call("vm.start", name="pv", nics=[{"vnet": 10, "mac": "52:54:00:0b:00:01", "ip": "10.0.0.21/24",
                                                    "probe": []}])
    assert wait_until(lambda: bool(qemu_pids(lab.host("h2").netns)), timeout=30), "the guest's QEMU did not start"
    before = host(lab, "h2")
    assert before.pid and before.libvirtd_pid and before.bmc_pid
    h1 = host(lab, "h1")
    bmc = ipmi(lab, "h2")
    assert bmc.status() == "on"

    t = time.monotonic()
    bmc.off()
    off_s = time.monotonic() - t
    assert bmc.status() == "off"
    assert shell.netns_pids(before.netns) == [], "power off left processes in the host's namespace"
    assert not shell.pid_alive(before.pid) and not shell.pid_alive(before.libvirtd_pid)
    assert shell.pid_alive(before.bmc_pid), "the BMC went down with its host"
    assert h1.pid and shell.pid_alive(h1.pid) and h1.libvirtd_pid and shell.pid_alive(h1.libvirtd_pid)

    t = time.monotonic()
    bmc.on()
    on_s = wait_power(bmc, "on")
    after = host(lab, "h2")
    assert after.pid and after.pid != before.pid and after.libvirtd_pid and after.libvirtd_pid != before.libvirtd_pid
    assert wait_until(lambda: gk(lab, "h2").call("status") is not None, timeout=10)
    assert isinstance(gk(lab, "h2").call("vm.list"), list)  # its libvirtd answers it again
    MEASURED.append(f"ipmi off {off_s:.2f} s (host cut, guest killed), on -> status on {on_s:.2f} s "
                    f"(ipmitool returns in {time.monotonic() - t - on_s:.2f} s)")


def test_ipmi_cycle_and_identify_reach_the_lab_host(lab: Lab) -> None:
    bmc = ipmi(lab, "h1")
    before = host(lab, "h1").pid
    bmc.cycle()  # ipmi_sim: off now, on a second later
    assert wait_until(lambda: host(lab, "h1").pid not in (None, before) and bmc.status() == "on", timeout=30)
    assert wait_until(lambda: gk(lab, "h1").call("status") is not None, timeout=10)
    t = time.time()
    bmc.identify(20)
    assert t + 19 <= LabPower(lab.spec.name, "h1", lab.state_dir).identify_until() <= time.time() + 21


def test_a_wrong_password_or_user_is_a_clear_power_error(lab: Lab, tmp_path: Path) -> None:
    config = dict(host(lab, "h2").power or {})
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    config.pop("driver")
    with pytest.raises(PowerError, match=r"ipmi 10.99.0.1:6232: `ipmitool chassis power status` failed .*"
                                         r"the BMC refused the password: check the password file"):
        IpmiPower(**{**config, "password_file": str(wrong)}).status()
    with pytest.raises(PowerError, match=r"the BMC does not know this user"):
        IpmiPower(**{**config, "user": "mallory"}).status()


def test_the_lab_driver_switches_a_host_directly(lab: Lab) -> None:
    power = LabPower(lab.spec.name, "h1", lab.state_dir)
    assert power.status() == "on"
    power.off()
    assert power.status() == "off" and shell.netns_pids(lab.host("h1").netns) == []
    t = time.monotonic()
    power.on()
    MEASURED.append(f"lab driver on (libvirtd + gatekeeper answering) {time.monotonic() - t:.2f} s")
    assert power.status() == "on" and gk(lab, "h1").call("status") is not None


def test_fencing_through_ipmi_confirms_the_host_off_and_a_refused_bmc_is_never_confirmed(
        lab: Lab, tmp_path: Path) -> None:
    bmc = ipmi(lab, "h2")
    fenced = fence(bmc, timeout=20, interval=0.5)
    assert fenced.confirmed and fenced.attempts == 1, fenced
    assert shell.netns_pids(lab.host("h2").netns) == []
    MEASURED.append(f"fence h2 through ipmi_sim: confirmed off in {fenced.seconds:.2f} s")
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    config = {k: v for k, v in (host(lab, "h1").power or {}).items() if k != "driver"}
    refused = fence(IpmiPower(**{**config, "password_file": str(wrong)}), timeout=2, interval=0.5)
    assert not refused.confirmed and "the BMC refused the password" in refused.reason, refused
    assert host(lab, "h1").pid and shell.pid_alive(host(lab, "h1").pid or 0)  # h1 untouched
    bmc.on()
    wait_power(bmc, "on")


def host_state(lab: Lab, name: str) -> str:
    status, hosts = call(lab, "GET", "/v1/hosts")
    assert status == 200 and isinstance(hosts, list), hosts
    return str(next(h for h in hosts if h["name"] == name)["state"])


def test_the_cli_powers_a_host_through_the_manager_which_holds_it_in_standby(
        managed: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = ["--state-dir", managed.state_dir]
    status, config = call(managed, "GET", "/v1/hosts/h2/power-config")
    assert status == 200 and isinstance(config, dict) and config["power"]["driver"] == "ipmi", config
    cli([*lab, "host", "power", "h2", "status", "--lab", managed.spec.name])
    assert capsys.readouterr().out.strip() == "h2: on (host state: ready)"
    before = host(managed, "h2").pid
    t = time.monotonic()
    cli([*lab, "host", "power", "h2", "off", "--lab", managed.spec.name])
    assert capsys.readouterr().out.strip() == "h2: powered off (host state: standby)"
    MEASURED.append(f"softudc host power h2 off through the manager and ipmi_sim {time.monotonic() - t:.2f} s")
    assert before and not shell.pid_alive(before) and shell.netns_pids(managed.host("h2").netns) == []
    assert host_state(managed, "h2") == "standby"
    status, events = call(managed, "GET", "/v1/events?kind=host&name=h2")
    assert status == 200 and isinstance(events, list)
    assert any(e["type"] == "Power" and "off through ipmi 10.99.0.1:6232" in e["message"] for e in events), events
    cli([*lab, "host", "power", "h2", "on", "--lab", managed.spec.name, "--wait", "30"])
    out = capsys.readouterr().out.strip()
    assert out.startswith("h2: powered on (host state: ready); ") and out.endswith(" s until its status said so")
    assert wait_until(lambda: host(managed, "h2").pid not in (None, before), timeout=30)
    assert wait_until(lambda: host_state(managed, "h2") == "ready", timeout=30)
    cli([*lab, "host", "power", "h1", "identify", "--seconds", "9", "--lab", managed.spec.name, "--direct"])
    assert "h1: identify LED on for 9 s (directly, ipmi 10.99.0.1:6231)" in capsys.readouterr().out


def test_the_manager_fences_only_with_force_a_host_that_still_reports(
        managed: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = ["--state-dir", managed.state_dir, "host", "power", "h1", "fence", "--lab", managed.spec.name]
    with pytest.raises(SystemExit):
        cli(lab)
    assert "h1 is not down (it still reports)" in capsys.readouterr().err
    assert host(managed, "h1").pid and shell.pid_alive(host(managed, "h1").pid or 0)
    cli([*lab, "--force"])
    assert capsys.readouterr().out.strip() == "h1: fenced (confirmed off) (host state: standby)"
    assert shell.netns_pids(managed.host("h1").netns) == [] and host_state(managed, "h1") == "standby"
    cli(["--state-dir", managed.state_dir, "host", "power", "h1", "on", "--lab", managed.spec.name])
    assert wait_until(lambda: host_state(managed, "h1") == "ready", timeout=30)
