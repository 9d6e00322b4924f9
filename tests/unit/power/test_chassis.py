"""ipmi_sim's chassis-control program: its get/set protocol mapped onto the lab driver."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.power import chassis
from softudc.power.driver import PowerError, PowerState


class FakePower:
    def __init__(self, state: PowerState = "on") -> None:
        self.state: PowerState = state
        self.calls: list[str] = []

    def status(self) -> PowerState:
        return self.state

    def off(self) -> None:
        self.calls.append("off")
        self.state = "off"


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[bool]:
    cycles: list[bool] = []
    monkeypatch.setattr(chassis, "_spawn_poweron", lambda args, cycle: cycles.append(cycle))
    monkeypatch.setattr(chassis, "_host_dir", lambda args: tmp_path)
    return cycles


ARGS = argparse.Namespace(lab="t1", host="h1", state_dir="/x")


def test_get_answers_one_parm_value_line_each() -> None:
    assert chassis._get(FakePower("on"), ["power", "boot"]) == ["power:1", "boot:default"]  # type: ignore[arg-type]
    assert chassis._get(FakePower("off"), ["power"]) == ["power:0"]  # type: ignore[arg-type]
    with pytest.raises(PowerError, match="chassis get reset: not supported"):
        chassis._get(FakePower(), ["reset"])  # type: ignore[arg-type]


def test_set_power_off_cuts_at_once_and_on_or_reset_start_a_worker(spawned: list[bool]) -> None:
    p = FakePower()
    chassis._set(p, ARGS, ["power", "0"])  # type: ignore[arg-type]
    assert p.calls == ["off"] and spawned == []
    chassis._set(p, ARGS, ["power", "1", "reset", "1", "boot", "pxe"])  # type: ignore[arg-type]
    assert spawned == [False, True]


def test_set_identify_takes_its_two_values_and_records_the_interval(spawned: list[bool], tmp_path: Path) -> None:
    chassis._set(FakePower(), ARGS, ["identify", "15 0", "power", "1"])  # type: ignore[arg-type]
    assert '"seconds": 15' in (tmp_path / "identify.json").read_text() and spawned == [False]


def test_an_unknown_set_is_an_error_and_main_says_it_on_stdout_with_exit_1(capsys: pytest.CaptureFixture[str],
                                                                         tmp_path: Path) -> None:
    with pytest.raises(PowerError, match="chassis set fan 1: not supported"):
        chassis._set(FakePower(), ARGS, ["fan", "1"])  # type: ignore[arg-type]
    assert chassis.main(["--state-dir", str(tmp_path), "nolab", "h1", "get", "power"]) == 1
    assert "softudc chassis h1: lab nolab/h1: no lab 'nolab'" in capsys.readouterr().out


@given(st.lists(st.sampled_from(["power", "reset", "boot", "identify", "shutdown", "fan", "0", "1", "15 0", "", "x y"]),
                max_size=8))
def test_any_set_arguments_are_done_or_refused_with_an_error_main_reports(pairs: list[str]) -> None:
    cycles: list[bool] = []
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as d:
        mp.setattr(chassis, "_spawn_poweron", lambda args, cycle: cycles.append(cycle))
        mp.setattr(chassis, "_host_dir", lambda args: Path(d))
        with contextlib.suppress(PowerError, ValueError, IndexError):  # main() prints these for ipmi_sim, exit 1
            chassis._set(FakePower(), ARGS, pairs)  # type: ignore[arg-type]
    assert len(cycles) <= len(pairs) // 2
