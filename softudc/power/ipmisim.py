"""A BMC per lab host: OpenIPMI's `ipmi_sim` (Debian package openipmi) serving IPMI v2 over LAN.

Each host's BMC runs in the lab's management namespace, not in the host's (a power cut there must
not take its BMC with it), on 10.99.0.1, UDP port BMC_PORT_BASE + the host's number (h1: 6231).
Its files are in `<lab dir>/<host>/bmc/`:

    lan.conf    the LAN channel, the user `admin` with a random password, `chassis_control`
    sim.emu     the emulated BMC (one MC at 0x20, as OpenIPMI's example)
    admin.pw    the password (0600): what `password_file` of the host's ipmi power config names
    state/      ipmi_sim's persistent state (users, SEL)
    sim.log     its output; poweron.log: the chassis program's power-on workers

Chassis power and identify requests run `python -m softudc.power.chassis` (the lab driver).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from softudc.atomicfile import write_atomic
from softudc.lab.state import Host, Lab, LabError

BMC_ADDR = "10.99.0.1"
BMC_PORT_BASE = 6230
BMC_USER = "admin"
CIPHER_SUITE = 3  # what ipmi_sim offers (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128)

SIM_EMU = """# Written by softudc lab: one BMC, as OpenIPMI's lanserv example.
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 0x09 0x08 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""


def bmc_dir(lab: Lab, host: Host) -> Path:
    return lab.dir / host.name / "bmc"


def bmc_port(lab: Lab, host: Host) -> int:
    return BMC_PORT_BASE + 1 + [h.name for h in lab.hosts].index(host.name)


def ipmi_config(lab: Lab, host: Host) -> dict[str, Any]:
    """The host's `ipmi` power config: reached from the management namespace."""
    return {"driver": "ipmi", "address": BMC_ADDR, "port": bmc_port(lab, host), "user": BMC_USER,
            "password_file": str(bmc_dir(lab, host) / "admin.pw"), "cipher_suite": CIPHER_SUITE,
            "netns": lab.mgmt_ns}


def lan_conf(lab: Lab, host: Host, password: str) -> str:
    chassis = (f"{sys.executable} -m softudc.power.chassis --state-dir {Path(lab.state_dir).resolve()} "
               f"{lab.spec.name} {host.name}")
    guid = uuid.uuid5(uuid.NAMESPACE_URL, f"softudc-lab/{lab.spec.name}/{host.name}/bmc").hex
    return f"""# Written by softudc lab for the BMC of {host.name}.
name "{lab.prefix}{host.name}"
set_working_mc 0x20
  startlan 1
    addr {BMC_ADDR} {bmc_port(lab, host)}
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid {guid}
  endlan
  chassis_control "{chassis}"
  user 2 true "{BMC_USER}" "{password}" admin 10 md5
"""


def write_bmc(lab: Lab, host: Host) -> Path:
    d = bmc_dir(lab, host)
    (d / "state").mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(8)  # IPMI v2 passwords are at most 20 bytes
    write_atomic(d / "admin.pw", (password + "\n").encode())  # 0600 from its first byte
    write_atomic(d / "lan.conf", lan_conf(lab, host, password).encode())  # holds it too: 0600
    (d / "sim.emu").write_text(SIM_EMU)
    return d


def start_bmc(lab: Lab, host: Host, timeout: float = 10.0) -> int:
    """Start the host's ipmi_sim in the management namespace; returns its PID once it answers."""
    d = write_bmc(lab, host)
    log = open(d / "sim.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(["ip", "netns", "exec", lab.mgmt_ns, "ipmi_sim", "-c", str(d / "lan.conf"),
                                 "-f", str(d / "sim.emu"), "-s", str(d / "state"), "-n"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except FileNotFoundError:
        raise LabError("ipmi_sim is not installed (apt-get install openipmi, or `make bootstrap`)") from None
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while not _listening(lab, bmc_port(lab, host)):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (d / "sim.log").read_text(errors="replace")[-1500:]
            raise LabError(f"ipmi_sim for {host.name} did not listen on {BMC_ADDR}:{bmc_port(lab, host)}; "
                           f"{d / 'sim.log'}:\n{tail}")
        time.sleep(0.05)
    return proc.pid  # `ip netns exec` execs: ipmi_sim's own PID


def _listening(lab: Lab, port: int) -> bool:
    """Whether a UDP socket is bound to the port in the management namespace (/proc/net/udp)."""
    out = subprocess.run(["ip", "netns", "exec", lab.mgmt_ns, "cat", "/proc/net/udp"], capture_output=True,
                         text=True, timeout=10).stdout
    return any(len(f) > 1 and f[1].endswith(f":{port:04X}") for f in (ln.split() for ln in out.splitlines()[1:]))
