"""`softudc host power`: a lab host switched directly with the driver its lab recorded (no root
needed for status and identify of a host whose processes are gone), and when the manager is asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from softudc.cli.errors import CliError
from softudc.cli.main import build_parser, main
from softudc.cli.power import cmd_host_power, wait_for
from softudc.lab.state import Host, Lab, LabSpec


def make_lab(tmp_path: Path, manager: bool = False, power: bool = True) -> Lab:
    lab = Lab(LabSpec("t1", hosts=1, manager=manager), str(tmp_path))
    config = {"driver": "lab", "lab": "t1", "host": "h1", "state_dir": str(tmp_path)} if power else None
    lab.hosts = [Host("h1", "sudc-t1-h1", 0, "u", "m", "a", "c", "l", pid=2**22 + 7, power=config)]  # no such PID
    lab.manager_pid = 2**22 + 9 if manager else None
    lab.save()
    return lab


def test_a_lab_without_a_manager_is_switched_directly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = make_lab(tmp_path)
    main(["--state-dir", str(tmp_path), "host", "power", "h1", "status", "--lab", "t1"])
    assert capsys.readouterr().out.strip() == "h1: off (directly, lab t1/h1)"
    main(["--state-dir", str(tmp_path), "host", "power", "h1", "identify", "--seconds", "5", "--lab", "t1"])
    assert capsys.readouterr().out.strip() == "h1: identify LED on for 5 s (directly, lab t1/h1)"
    assert (lab.dir / "h1" / "identify.json").exists()


def test_direct_needs_a_lab_and_a_lab_host_needs_its_power_config(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    make_lab(tmp_path, manager=True, power=False)
    with pytest.raises(SystemExit):
        main(["--state-dir", str(tmp_path), "host", "power", "h1", "status", "--direct"])
    assert "name the lab with --lab" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--state-dir", str(tmp_path), "host", "power", "h1", "status", "--lab", "t1", "--direct"])
    assert "h1 has no power config (a lab made before power drivers)" in capsys.readouterr().err


def test_a_lab_with_a_manager_goes_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_lab(tmp_path, manager=True)
    asked: list[tuple[str, str, str | None]] = []

    class Api:
        def call(self, method: str, path: str, body: str | None = None) -> tuple[int, object]:
            asked.append((method, path, body))
            return 409, {"error": "h1 still has 1 instance(s): shop/web-0; powering it off stops them"}

    monkeypatch.setattr("softudc.cli.power.connect", lambda a: Api())
    with pytest.raises(CliError, match="manager: h1 still has 1 instance"):
        cmd_host_power(build_parser().parse_args(["--state-dir", str(tmp_path), "host", "power", "h1", "off",
                                                  "--lab", "t1"]))
    body = '{"action": "off", "seconds": 15, "force": false, "timeout": 30.0}'
    assert asked == [("POST", "/v1/hosts/h1/power", body)]


def test_fencing_a_lab_host_directly_that_cannot_be_confirmed_fails_saying_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = make_lab(tmp_path)
    (lab.dir / "power.lock").mkdir()  # the lab driver cannot take its lock: power off fails every time
    with pytest.raises(SystemExit):
        main(["--state-dir", str(tmp_path), "host", "power", "h1", "fence", "--lab", "t1", "--timeout", "0.5"])
    assert "h1: lab t1/h1: not confirmed off within 0.5 s: power off failed" in capsys.readouterr().err


def test_wait_polls_the_status_until_it_follows_and_gives_up_saying_so(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    make_lab(tmp_path, manager=True)
    answers = iter(["on", "on", "off"])
    monkeypatch.setattr("softudc.cli.power._command", lambda a, action: {"power": next(answers, "on")})
    a = build_parser().parse_args(["--state-dir", str(tmp_path), "host", "power", "h1", "off", "--lab", "t1",
                                   "--wait", "5"])
    t = [0.0]
    assert wait_for(a, "off", clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s)) == 1.0
    with pytest.raises(CliError, match="h1: still on 5 s after the command"):
        wait_for(a, "off", clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s))
