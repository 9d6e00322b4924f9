"""The manager in a lab: it runs in the management namespace (10.99.0.1:8443); every gatekeeper
joins it with a one-time token and a CSR, as a real host would, and syncs over mutual TLS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from softudc.atomicfile import write_atomic
from softudc.lab.state import Host, Lab, LabError

MANAGER_ADDR = "10.99.0.1"
MANAGER_PORT = 8443
METRICS_PORT = 9465


def manager_dir(lab: Lab) -> Path:
    return lab.dir / "manager"


def start_manager(lab: Lab, timeout: float = 15.0, fresh: bool = True) -> tuple[int, str]:
    """Start the lab's manager (initialised first unless `fresh` is False: a restart keeps its
    CA, store and tokens); returns (pid, admin token)."""
    from softudc.manager.service import init

    d = manager_dir(lab)
    d.mkdir(parents=True, exist_ok=True)
    if fresh:
        token = init(d, [MANAGER_ADDR])
        write_atomic(d / "admin.token", token.encode())  # 0600 from its first byte (audit R22)
    token = (d / "admin.token").read_text().strip()
    log = open(d / "manager.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(["ip", "netns", "exec", lab.mgmt_ns, sys.executable, "-m", "softudc.cli",
                             "--state-dir", str(lab.dir), "manager", "--listen", f"{MANAGER_ADDR}:{MANAGER_PORT}",
                             "--metrics", f"{MANAGER_ADDR}:{METRICS_PORT}"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise LabError(f"the manager exited with {proc.returncode}; see {d / 'manager.log'}")
        ok = subprocess.run(["ip", "netns", "exec", lab.mgmt_ns, sys.executable, "-c",
                             f"import socket; socket.create_connection(('{MANAGER_ADDR}', {MANAGER_PORT}), 1)"],
                            capture_output=True).returncode == 0
        if ok:
            return proc.pid, token
        if time.monotonic() > deadline:
            raise LabError(f"the manager did not listen within {timeout:.0f} s; see {d / 'manager.log'}")
        time.sleep(0.1)


def join_host(lab: Lab, host: Host) -> dict[str, str]:
    """What a gatekeeper does to join: make a key, send a CSR with a one-time token, keep the cert.
    Done from the host's namespace, over the management network."""
    from softudc.pki import CertificateAuthority

    d = manager_dir(lab)
    token = CertificateAuthority.load(d / "pki").create_join_token(host.name)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host.name)]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    hdir = lab.dir / host.name
    request = json.dumps({"token": token, "csr": csr})
    code = ("import http.client, ssl, sys\n"
            f"ctx = ssl.create_default_context(cafile={str(d / 'pki' / 'ca.crt')!r})\n"
            f"c = http.client.HTTPSConnection({MANAGER_ADDR!r}, {MANAGER_PORT}, context=ctx, timeout=10)\n"
            "c.request('POST', '/v1/hosts/join', body=sys.stdin.read(), headers={'Content-Type': 'application/json'})\n"
            "r = c.getresponse(); sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n")
    out = subprocess.run(["ip", "netns", "exec", host.netns, sys.executable, "-c", code], input=request,
                         capture_output=True, text=True, timeout=30)
    status, _, body = out.stdout.partition("\n")
    if status != "200":
        raise LabError(f"{host.name} could not join the manager: {status} {body or out.stderr}")
    joined = json.loads(body)
    files = {"ca": str(hdir / "manager-ca.crt"), "cert": str(hdir / "gatekeeper.crt"),
             "key": str(hdir / "gatekeeper.key")}
    Path(files["ca"]).write_text(joined["ca"])
    Path(files["cert"]).write_text(joined["certificate"])
    write_atomic(Path(files["key"]), key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))  # 0600 from the start (R22)
    return files


def call(lab: Lab, method: str, path: str, body: str | None = None) -> tuple[int, object]:
    """An admin API call from the management namespace (where the manager listens)."""
    d = manager_dir(lab)
    code = ("import http.client, ssl, sys, json\n"
            f"ctx = ssl.create_default_context(cafile={str(d / 'pki' / 'ca.crt')!r})\n"
            f"c = http.client.HTTPSConnection({MANAGER_ADDR!r}, {MANAGER_PORT}, context=ctx, timeout=30)\n"
            f"token = open({str(d / 'admin.token')!r}).read().strip()\n"
            "data = sys.stdin.read() or None\n"
            f"c.request({method!r}, {path!r}, body=data, headers={{'Authorization': 'Bearer ' + token}})\n"
            "r = c.getresponse(); sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n")
    out = subprocess.run(["ip", "netns", "exec", lab.mgmt_ns, sys.executable, "-c", code], input=body or "",
                         capture_output=True, text=True, timeout=60)
    status, _, payload = out.stdout.partition("\n")
    if not status.isdigit():
        raise LabError(f"manager call {method} {path} failed: {out.stderr.strip()}")
    return int(status), json.loads(payload or "null")
