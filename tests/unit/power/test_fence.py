"""Fencing: confirmed only by an "off" status read after the off command was taken; anything
else, within the timeout, is unconfirmed with its reason."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from softudc.power.driver import PowerError, PowerState
from softudc.power.fence import fence

# One step of a scripted driver: what off() does ("ok"/"fail") and what status() answers ("on"/"off"/"fail").
Step = tuple[str, str]


class Scripted:
    name = "bmc h3"

    def __init__(self, offs: list[str], statuses: list[str]) -> None:
        self.offs: Iterator[str] = iter(offs)
        self.statuses: Iterator[str] = iter(statuses)
        self.log: list[str] = []

    def off(self) -> None:
        r = next(self.offs, "fail")
        self.log.append(f"off:{r}")
        if r == "fail":
            raise PowerError("bmc h3: no BMC answered at this address")

    def status(self) -> PowerState:
        r = next(self.statuses, "fail")
        self.log.append(f"status:{r}")
        if r == "fail":
            raise PowerError("bmc h3: status timed out")
        return "off" if r == "off" else "on"

    def on(self) -> None:
        raise AssertionError("fencing never powers on")

    def cycle(self) -> None:
        raise AssertionError("fencing never cycles")

    def identify(self, seconds: int) -> None:
        raise AssertionError("fencing does not identify")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def run(driver: Scripted, timeout: float = 10.0) -> tuple[bool, str, float, int]:
    clock = Clock()
    r = fence(driver, timeout=timeout, interval=1.0, clock=clock, sleep=clock.sleep)
    return r.confirmed, r.reason, r.seconds, r.attempts


def test_off_then_status_off_is_confirmed_at_once() -> None:
    d = Scripted(["ok"], ["off"])
    assert run(d) == (True, "bmc h3: off (confirmed by its status)", 0.0, 1)
    assert d.log == ["off:ok", "status:off"]


def test_a_dropped_off_is_sent_again_and_a_slow_power_down_is_waited_for() -> None:
    d = Scripted(["fail", "ok"], ["on", "fail", "off"])
    confirmed, _, seconds, attempts = run(d)
    assert confirmed and attempts == 2 and seconds == 3.0
    assert d.log == ["off:fail", "off:ok", "status:on", "status:fail", "status:off"]


def test_a_bmc_that_never_answers_is_unconfirmed_with_its_error() -> None:
    confirmed, reason, seconds, attempts = run(Scripted([], []), timeout=5)
    assert not confirmed and attempts == 6 and seconds == 5  # at 0, 1, ... 5 s
    assert reason == "bmc h3: not confirmed off within 5 s: power off failed: bmc h3: no BMC answered at this address"


def test_a_host_that_stays_on_is_unconfirmed() -> None:
    confirmed, reason, _, attempts = run(Scripted(["ok"], ["on"] * 100), timeout=4)
    assert not confirmed and attempts == 1 and reason.endswith("the off command was taken but the status still says on")


@given(st.lists(st.sampled_from(["ok", "fail"]), max_size=12), st.lists(st.sampled_from(["on", "off", "fail"]),
                                                                        max_size=12), st.integers(1, 12))
def test_confirmed_only_by_an_off_status_after_a_taken_off_and_never_past_the_timeout(
        offs: list[str], statuses: list[str], timeout: int) -> None:
    d = Scripted(offs, statuses)
    confirmed, reason, seconds, _ = run(d, timeout=timeout)
    assert seconds <= timeout
    if confirmed:
        assert d.log[-1] == "status:off" and "off:ok" in d.log
        assert d.log.index("off:ok") < len(d.log) - 1
    else:
        assert "not confirmed off" in reason
    assert d.log.count("off:ok") <= 1  # once taken, never sent again
