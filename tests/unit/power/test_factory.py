"""Power configs: each driver built from its config, every bad field named, no password in clear."""

from __future__ import annotations

from typing import Any

import pytest

from softudc.power.driver import PowerDriver, PowerError
from softudc.power.factory import check_config, driver_for
from softudc.power.ipmi import IpmiPower
from softudc.power.lab import LabPower


def test_a_lab_config_makes_a_lab_driver() -> None:
    d = driver_for({"driver": "lab", "lab": "demo", "host": "h2", "state_dir": "/tmp/x"})
    assert isinstance(d, LabPower) and isinstance(d, PowerDriver)
    assert (d.lab, d.host, d.state_dir, d.name) == ("demo", "h2", "/tmp/x", "lab demo/h2")


def test_an_ipmi_config_makes_an_ipmi_driver_with_its_defaults() -> None:
    d = driver_for({"driver": "ipmi", "address": "10.0.0.5", "user": "admin", "password_file": "/p", "timeout_s": 3})
    assert isinstance(d, IpmiPower) and isinstance(d, PowerDriver)
    assert (d.port, d.cipher_suite, d.netns, d.timeout_s, d.name) == (623, None, None, 3.0, "ipmi 10.0.0.5:623")


@pytest.mark.parametrize(("config", "message"), [
    (["lab"], "expected a mapping"),
    ({"driver": "wol"}, r"driver 'wol', expected one of lab, ipmi"),
    ({"driver": "lab", "host": "h1"}, r"\(lab\): `lab` is missing"),
    ({"driver": "lab", "lab": "a", "host": "h1", "mac": "x"}, r"unknown field\(s\) mac"),
    ({"driver": "ipmi", "address": "a", "user": "u", "password": "p"}, r"`password` is not accepted"),
    ({"driver": "ipmi", "address": "a", "user": "u"}, r"`password_file` is missing"),
    ({"driver": "ipmi", "address": "a", "user": "u", "password_file": "/p", "port": "623"},
     r"`port` = '623', expected int"),
    ({"driver": "ipmi", "address": "a", "user": "u", "password_file": "/p", "port": True}, r"expected int"),
    ({"driver": "ipmi", "address": "a", "user": "u", "password_file": "/p", "port": 70000}, r"expected 1..65535"),
])
def test_a_bad_config_is_refused_naming_the_field(config: Any, message: str) -> None:
    with pytest.raises(PowerError, match=message):
        check_config(config)
