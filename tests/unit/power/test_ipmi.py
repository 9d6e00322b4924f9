"""The ipmi driver: the ipmitool command line, its output parsed, its failures explained."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.power.driver import PowerError
from softudc.power.ipmi import IpmiPower, parse_status, reason


class FakeIpmitool:
    def __init__(self, rc: int = 0, out: str = "", err: str = "", exc: Exception | None = None) -> None:
        self.rc, self.out, self.err, self.exc = rc, out, err, exc
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        if self.exc:
            raise self.exc
        return subprocess.CompletedProcess(list(argv), self.rc, self.out, self.err)


@pytest.fixture
def pwfile(tmp_path: Path) -> str:
    p = tmp_path / "bmc.pw"
    p.write_text("s3cret\n")
    p.chmod(0o600)
    return str(p)


def test_status_runs_ipmitool_with_the_password_from_the_file_and_parses_the_answer(pwfile: str) -> None:
    fake = FakeIpmitool(out="Chassis Power is off\n", err="Loading IANA PEN Registry...\n")
    d = IpmiPower("10.99.0.1", "admin", pwfile, port=6231, cipher_suite=3, netns="sudc-x-mgmt", run=fake)
    assert d.status() == "off"
    argv = fake.calls[0]
    assert argv[:4] == ["ip", "netns", "exec", "sudc-x-mgmt"]
    assert argv[4:] == ["ipmitool", "-I", "lanplus", "-H", "10.99.0.1", "-p", "6231", "-U", "admin", "-f", pwfile,
                        "-N", "2", "-R", "2", "-v", "-C", "3", "chassis", "power", "status"]
    assert "s3cret" not in " ".join(argv)


@pytest.mark.parametrize(("method", "args", "tail"), [
    ("on", (), ["chassis", "power", "on"]), ("off", (), ["chassis", "power", "off"]),
    ("cycle", (), ["chassis", "power", "cycle"]), ("identify", (30,), ["chassis", "identify", "30"]),
])
def test_each_command_is_its_ipmitool_chassis_command(pwfile: str, method: str, args: tuple[int, ...],
                                                      tail: list[str]) -> None:
    fake = FakeIpmitool(out="Chassis Power Control: Up/On\n")
    getattr(IpmiPower("bmc", "admin", pwfile, run=fake), method)(*args)
    assert fake.calls[0][-len(tail):] == tail and "-C" not in fake.calls[0]


@pytest.mark.parametrize(("err", "meaning"), [
    ("Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n",
     "refused the password"),
    ("RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish", "does not know this user"),
    ("Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\n",
     "no BMC answered at this address"),
    ("Error: something new\n", "Error: something new"),
])
def test_a_failure_says_why_in_the_operators_terms(pwfile: str, err: str, meaning: str) -> None:
    d = IpmiPower("bmc", "admin", pwfile, run=FakeIpmitool(rc=1, err=err))
    with pytest.raises(PowerError, match=rf"ipmi bmc:623: `ipmitool chassis power off` failed \(exit 1\): .*{meaning}"):
        d.off()


def test_an_answer_without_a_power_state_is_an_error(pwfile: str) -> None:
    with pytest.raises(PowerError, match=re.escape("not 'Chassis Power is on|off'")):
        IpmiPower("bmc", "admin", pwfile, run=FakeIpmitool(out="Hello\n")).status()


def test_no_ipmitool_and_a_hung_one_are_errors_that_say_what_to_do(pwfile: str) -> None:
    with pytest.raises(PowerError, match="ipmitool is not installed"):
        IpmiPower("bmc", "admin", pwfile, run=FakeIpmitool(exc=FileNotFoundError())).on()
    with pytest.raises(PowerError, match=r"did not finish within .* is the BMC reachable"):
        IpmiPower("bmc", "admin", pwfile, run=FakeIpmitool(exc=subprocess.TimeoutExpired("ipmitool", 1))).on()


def test_a_missing_or_open_password_file_is_refused_before_ipmitool_runs(tmp_path: Path) -> None:
    fake = FakeIpmitool()
    with pytest.raises(PowerError, match=r"No such file.*chmod 600"):
        IpmiPower("bmc", "admin", str(tmp_path / "none"), run=fake).status()
    open_file = tmp_path / "pw"
    open_file.write_text("x")
    open_file.chmod(0o644)
    with pytest.raises(PowerError, match="readable by others \\(mode 644\\); chmod 600"):
        IpmiPower("bmc", "admin", str(open_file), run=fake).status()
    assert fake.calls == []


def test_identify_takes_what_ipmi_can_carry(pwfile: str) -> None:
    with pytest.raises(PowerError, match="0 \\(off\\) to 255"):
        IpmiPower("bmc", "admin", pwfile, run=FakeIpmitool()).identify(256)


@given(st.text())
def test_parse_status_takes_any_text_and_finds_only_a_whole_status_line(text: str) -> None:
    state = parse_status(text)
    assert state is None or f"Chassis Power is {state}" in text
    assert parse_status(text + "\nChassis Power is on\n") in ("on", "off")


@given(st.text())
def test_reason_always_says_something(text: str) -> None:
    assert reason(text).strip()
