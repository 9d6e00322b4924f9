"""Prometheus for a lab: the project's configuration (configs/prometheus/: scrape jobs by
file-based service discovery, recording and alerting rules) copied into the lab's state directory,
with targets/*.json naming this lab's managers, gatekeepers and vnetds. A real pool writes the same target
files from its own inventory (docs/monitoring.md)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from softudc.atomicfile import write_atomic
from softudc.lab import shell
from softudc.lab.lab import METRICS_PORT as GATEKEEPER_METRICS_PORT
from softudc.lab.manager import MANAGER_ADDR
from softudc.lab.manager import METRICS_PORT as MANAGER_METRICS_PORT
from softudc.lab.state import Lab, LabError
from softudc.lab.vnetd import METRICS_PORT as VNETD_METRICS_PORT
from softudc.lab.vnetd import vnetd_mgmt_ip

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "prometheus"
JOBS = ("manager", "gatekeeper", "vnetd")


def targets(lab: Lab) -> dict[str, list[dict[str, Any]]]:
    """Per job, the file_sd groups of this lab: every manager (the HA lab's, or the one manager) and
    every host's gatekeeper and every segment's vnetd, on the management network."""
    lab_label = {"lab": lab.spec.name}
    managers: list[str] = []
    if lab.managers:
        managers = [m.address for m in lab.managers]
    elif lab.manager_pid:
        managers = [MANAGER_ADDR]
    return {
        "manager": [{"targets": [f"{a}:{MANAGER_METRICS_PORT}" for a in managers], "labels": lab_label}]
        if managers else [],
        "gatekeeper": [{"targets": [f"{h.mgmt_ip}:{GATEKEEPER_METRICS_PORT}"], "labels": {**lab_label, "host": h.name}}
                       for h in lab.hosts],
        "vnetd": [{"targets": [f"{vnetd_mgmt_ip(v.segment)}:{VNETD_METRICS_PORT}"],
                   "labels": {**lab_label, "segment": str(v.segment)}} for v in lab.vnetds],
    }


def write_config(lab: Lab, out: Path | None = None) -> Path:
    """configs/prometheus/ copied to `out` (default: the lab's `prometheus/` directory) with this
    lab's target files; returns the path of prometheus.yml there. Run again after the lab changes:
    Prometheus re-reads target files on its own."""
    out = out or lab.dir / "prometheus"
    for sub in ("rules", "tests"):
        shutil.copytree(CONFIG_DIR / sub, out / sub, dirs_exist_ok=True)
    shutil.copy2(CONFIG_DIR / "prometheus.yml", out / "prometheus.yml")
    (out / "targets").mkdir(parents=True, exist_ok=True)
    for job, groups in targets(lab).items():
        write_atomic(out / "targets" / f"{job}.json", (json.dumps(groups, indent=2) + "\n").encode(), mode=0o644)
    return out / "prometheus.yml"


def start_prometheus(lab: Lab, port: int = 9090, timeout: float = 30.0) -> int:
    """A real Prometheus for the lab, in its management namespace (where the targets listen) on
    127.0.0.1:`port` there, with the configuration `write_config` writes; returns its PID once it
    says it is ready. `softudc lab down` stops it with everything else in the lab's namespaces."""
    config = write_config(lab)
    log = open(config.parent / "prometheus.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.mgmt_ns, "prometheus", f"--config.file={config}",
         f"--storage.tsdb.path={config.parent / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"prometheus exited with {proc.returncode}: see {config.parent / 'prometheus.log'}")
        with contextlib.suppress(LabError, ValueError):
            if query_api(lab, f"http://127.0.0.1:{port}/-/ready", raw=True):
                return proc.pid
        time.sleep(0.3)
    shell.stop_pid(proc.pid)
    raise LabError(f"prometheus did not get ready within {timeout:.0f} s: see {config.parent / 'prometheus.log'}")


_GET = ("import sys, urllib.request\n"
        "try:\n"
        "    sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
        "except Exception as e:\n"
        "    sys.exit(f'{sys.argv[1]}: {e}')\n")


def query_api(lab: Lab, url: str, raw: bool = False) -> Any:
    """GET `url` from inside the lab's management namespace: the body (`raw`), else Prometheus's
    JSON answer's `data`. LabError when it does not answer or says it failed."""
    out = subprocess.run(["ip", "netns", "exec", lab.mgmt_ns, sys.executable, "-c", _GET, url],
                         capture_output=True, text=True, timeout=15)
    if out.returncode != 0:
        raise LabError(out.stderr.strip() or f"{url}: exit {out.returncode}")
    if raw:
        return out.stdout
    answer = json.loads(out.stdout)
    if answer.get("status") != "success":
        raise LabError(f"{url}: {answer.get('error', answer)}")
    return answer["data"]
