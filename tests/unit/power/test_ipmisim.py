"""A lab host's BMC files: the LAN channel, the user with a random password kept 0600, the chassis program."""

from __future__ import annotations

import stat
from pathlib import Path

from softudc.lab.state import Host, Lab, LabSpec
from softudc.power.factory import check_config
from softudc.power.ipmisim import bmc_port, ipmi_config, write_bmc


def lab(tmp_path: Path) -> Lab:
    lab = Lab(LabSpec("t1", hosts=2, power="ipmi"), str(tmp_path))
    lab.hosts = [Host(f"h{i}", f"sudc-t1-h{i}", 0, "u", "m", "a", "c", "l") for i in (1, 2)]
    return lab


def test_each_host_has_its_port_and_a_valid_ipmi_config(tmp_path: Path) -> None:
    t = lab(tmp_path)
    assert [bmc_port(t, h) for h in t.hosts] == [6231, 6232]
    config = ipmi_config(t, t.hosts[1])
    check_config(config)
    assert config["netns"] == "sudc-t1-mgmt" and config["password_file"].endswith("h2/bmc/admin.pw")


def test_the_bmc_files_hold_a_fresh_password_readable_only_by_us(tmp_path: Path) -> None:
    t = lab(tmp_path)
    d = write_bmc(t, t.hosts[0])
    password = (d / "admin.pw").read_text().strip()
    conf = (d / "lan.conf").read_text()
    assert len(password) == 16 and f'"admin" "{password}" admin' in conf
    assert "addr 10.99.0.1 6231" in conf and "-m softudc.power.chassis --state-dir" in conf and " t1 h1\"" in conf
    for f in ("admin.pw", "lan.conf"):
        assert stat.S_IMODE((d / f).stat().st_mode) == 0o600
    assert (write_bmc(t, t.hosts[0]) / "admin.pw").read_text().strip() != password  # a new one each lab
