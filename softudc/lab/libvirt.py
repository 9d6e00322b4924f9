"""A libvirtd per lab host (reference/virt-lab.md §4).

A root libvirtd has /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
/var/cache/libvirt compiled in, and `-f` only moves libvirtd.conf; so each host's daemon runs in
the host's network namespace plus a private mount and UTS namespace, with those five
directories bind-mounted from the host's lab directory. Every step execs, so the PID we keep is
libvirtd's own. Each daemon gets its own host_uuid (there is no DMI here, and libvirt refuses to
migrate between two daemons with the same one), listens on TCP on the host's management address
(migrations between hosts), and on a unix socket the gatekeeper reaches at
<host dir>/libvirt/run/libvirt-sock.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from softudc.atomicfile import private_dir
from softudc.lab.state import Host, Lab, LabError

DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt",
        "cache": "/var/cache/libvirt"}


def libvirt_dir(lab: Lab, host: Host) -> Path:
    return lab.dir / host.name / "libvirt"


def libvirt_uri(lab: Lab, host: Host) -> str:
    """How the gatekeeper (root mount namespace) reaches this host's daemon."""
    return f"qemu+unix:///system?socket={libvirt_dir(lab, host) / 'run' / 'libvirt-sock'}"


def migration_uri(host: Host) -> str:
    """How another host's libvirtd reaches this one (peer-to-peer migration)."""
    return f"qemu+tcp://{host.mgmt_ip}/system"


def write_config(lab: Lab, host: Host) -> None:
    base = libvirt_dir(lab, host)
    for d in DIRS:
        (base / d).mkdir(parents=True, exist_ok=True)
    private_dir(lab.dir / host.name / "nbd")  # libvirtd refuses a missing nbd_tls_x509_cert_dir; the join fills it
    host_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"softudc-lab/{lab.spec.name}/{host.name}")
    (base / "etc" / "libvirtd.conf").write_text(f"""# Written by softudc lab for {host.name}.
listen_tcp = 1
listen_tls = 0
listen_addr = "{host.mgmt_ip}"
auth_tcp = "none"
auth_unix_rw = "none"
unix_sock_group = "root"
host_uuid = "{host_uuid}"
log_outputs = "2:file:/var/log/libvirt/libvirtd.log"
""")
    (base / "etc" / "qemu.conf").write_text(f"""# Written by softudc lab for {host.name}.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
migration_address = "{host.mgmt_ip}"
migration_host = "{host.mgmt_ip}"
# NBD+TLS volume disks: the certificate the host joined with (softudc/lab/manager.py)
nbd_tls_x509_cert_dir = "{lab.dir / host.name / 'nbd'}"
""")


def start_libvirtd(lab: Lab, host: Host, timeout: float = 15.0) -> int:
    write_config(lab, host)
    base = libvirt_dir(lab, host)
    # The mount points are libvirt's standard directories; they may not exist yet (nothing has
    # started the system daemon), and a bind mount needs them.
    targets = " ".join(DIRS.values())
    mounts = "; ".join(f"mount --bind {base / d} {target}" for d, target in DIRS.items())
    script = (f"set -e; mkdir -p {targets}; hostname {host.name}; {mounts}; "
              "exec libvirtd --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid")
    log = open(base / "log" / "libvirtd.stdout", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(["ip", "netns", "exec", host.netns, "unshare", "--uts", "--mount", "--propagation",
                             "private", "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    sock = base / "run" / "libvirt-sock"
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (base / "log" / "libvirtd.log").read_text(errors="replace")[-2000:] \
                if (base / "log" / "libvirtd.log").exists() else ""
            raise LabError(f"libvirtd on {host.name} did not start (is libvirt-daemon-system installed? "
                           f"run `make bootstrap`); log:\n{tail}")
        time.sleep(0.05)
    return proc.pid
