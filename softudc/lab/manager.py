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
    token = init_manager_dir(lab, [MANAGER_ADDR]) if fresh else admin_token(lab)
    return spawn_manager(lab, MANAGER_ADDR, [], "manager.log", timeout), token


def init_manager_dir(lab: Lab, addresses: list[str]) -> str:
    """`softudc init` for the lab: the CA, a server certificate naming every manager's address,
    the admin token (saved 0600). Every manager of the lab shares this directory (decision 7)."""
    from softudc.manager.service import init

    d = manager_dir(lab)
    d.mkdir(parents=True, exist_ok=True)
    token = init(d, addresses)
    write_atomic(d / "admin.token", token.encode())  # 0600 from its first byte (audit R22)
    return token


def admin_token(lab: Lab) -> str:
    return (manager_dir(lab) / "admin.token").read_text().strip()


def spawn_manager(lab: Lab, address: str, extra: list[str], log_name: str, timeout: float = 15.0) -> int:
    """`softudc manager` in the management namespace on `address` (`extra`: more options); waits
    until it listens and returns its PID."""
    d = manager_dir(lab)
    log = open(d / log_name, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(["ip", "netns", "exec", lab.mgmt_ns, sys.executable, "-m", "softudc.cli",
                             "--state-dir", str(lab.dir), "manager", "--listen", f"{address}:{MANAGER_PORT}",
                             "--metrics", f"{address}:{METRICS_PORT}", *extra],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise LabError(f"the manager on {address} exited with {proc.returncode}; see {d / log_name}")
        ok = subprocess.run(["ip", "netns", "exec", lab.mgmt_ns, sys.executable, "-c",
                             f"import socket; socket.create_connection(('{address}', {MANAGER_PORT}), 1)"],
                            capture_output=True).returncode == 0
        if ok:
            return proc.pid  # `ip netns exec` execs: the manager's own PID
        if time.monotonic() > deadline:
            raise LabError(f"the manager on {address} did not listen within {timeout:.0f} s; see {d / log_name}")
        time.sleep(0.1)


def manager_addresses(lab: Lab) -> list[str]:
    """Where the lab's managers listen: every HA manager's address, else the one manager's."""
    return [m.address for m in lab.managers] or [MANAGER_ADDR]


def join_host(lab: Lab, host: Host) -> dict[str, str]:
    """What a gatekeeper does to join: make a key, send a CSR with a one-time token, keep the cert.
    Done from the host's namespace, over the management network."""
    from softudc.pki import CertificateAuthority, write_nbd_tls_dir

    d = manager_dir(lab)
    token = CertificateAuthority.load(d / "pki").create_join_token(host.name)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host.name)]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    hdir = lab.dir / host.name
    request = json.dumps({"token": token, "csr": csr, "addresses": [host.underlay_ip]})  # also serves NBD
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
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_atomic(Path(files["key"]), key_pem)  # 0600 from the start (R22)
    files["nbd"] = str(hdir / "nbd")  # [volumes] tls_dir: the same certificate serves its exports
    write_nbd_tls_dir(Path(files["nbd"]), joined["ca"].encode(), joined["certificate"].encode(), key_pem)
    return files


# Run in the management namespace: each manager in turn until one answers (not 502/503/504).
_CALL = """import http.client, json, ssl, sys
addresses, port, ca, token_file, method, path = json.loads(sys.argv[1])
ctx = ssl.create_default_context(cafile=ca)
token = open(token_file).read().strip()
data = sys.stdin.read() or None
answer, failed = None, []
for address in addresses:
    try:
        c = http.client.HTTPSConnection(address, port, context=ctx, timeout=30)
        c.request(method, path, body=data, headers={'Authorization': 'Bearer ' + token})
        r = c.getresponse()
        answer = (r.status, r.read().decode())
    except (OSError, http.client.HTTPException) as e:
        failed.append(f'{address}: {e or type(e).__name__}')
        continue
    if answer[0] not in (502, 503, 504):
        break
if answer is None:
    sys.exit('no manager answered: ' + '; '.join(failed))
sys.stdout.write(str(answer[0]) + chr(10) + answer[1])
"""


def call(lab: Lab, method: str, path: str, body: str | None = None,
         addresses: list[str] | None = None) -> tuple[int, object]:
    """An admin API call from the management namespace (where the managers listen), to each of the
    lab's managers in turn (or of `addresses`) until one answers."""
    d = manager_dir(lab)
    args = json.dumps([addresses or manager_addresses(lab), MANAGER_PORT, str(d / "pki" / "ca.crt"),
                       str(d / "admin.token"), method, path])
    out = subprocess.run(["ip", "netns", "exec", lab.mgmt_ns, sys.executable, "-c", _CALL, args],
                         input=body or "", capture_output=True, text=True, timeout=90)
    status, _, payload = out.stdout.partition("\n")
    if not status.isdigit():
        raise LabError(f"manager call {method} {path} failed: {out.stderr.strip()}; is the lab's manager running "
                       f"(softudc lab status {lab.spec.name})?")
    return int(status), json.loads(payload or "null")
